"""NER and relation extraction as generative extraction (option mode=generative): the inline target, its
parse back to one tag per word / one relation, scoring through the head mode's own scorers, and short
trainings on a decoder and an encoder that save, reload and predict the same."""
from __future__ import annotations

import pytest

from nlpkit_tasks.ner import align_tags, parse_generated, parse_inline, render_inline, spans
from nlpkit_tasks.relation_extraction import inline_marked_text, parse_marked, parse_relation

TYPES = ["LOC", "MISC", "ORG", "PER"]


# ---- NER: render -> parse ------------------------------------------------------------------------------
ROUND_TRIPS = [
    # entities in the middle, punctuation
    (["John", "Smith", "lives", "in", "Paris", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]),
    # entities at the start and at the end, one word each
    (["Paris", "beat", "Lyon"], ["B-ORG", "O", "B-ORG"]),
    # the whole sentence one entity
    (["New", "York", "Times"], ["B-ORG", "I-ORG", "I-ORG"]),
    # adjacent entities of the same type stay two, and of different types too
    (["Merkel", "Obama", "EU", "talks"], ["B-PER", "B-PER", "B-ORG", "O"]),
    # words with brackets in them, and words that ARE the delimiters (inside and outside entities)
    (["[", "1", "]", "(", "PER", ")", "a]b", "[x", "|", "AT|T", "\\[", "]"],
     ["O", "O", "O", "O", "O", "O", "B-MISC", "I-MISC", "O", "B-ORG", "O", "O"]),
    (["the", "[", "Bank", "|", "]", "said"], ["O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]),
    # words that begin with a delimiter
    (["]a", "|x", "[1]", "Bank]"], ["B-ORG", "I-ORG", "O", "B-ORG"]),
    # no entity at all, and a one-word sentence
    (["nothing", "here", "."], ["O", "O", "O"]),
    (["Berlin"], ["B-LOC"]),
]


@pytest.mark.parametrize("tokens,tags", ROUND_TRIPS)
def test_render_then_parse_gives_the_tags_back(tokens, tags):
    text = render_inline(tokens, tags)
    parsed = parse_generated(text, tokens, TYPES)
    assert parsed == {"tags": tags, "malformed": False, "words_changed": False}, text


def test_the_target_brackets_entities_inline_with_spaced_delimiters():
    text = render_inline(["John", "Smith", "lives", "in", "Paris", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"])
    assert text == "[ John Smith | PER ] lives in [ Paris | LOC ] ."
    # a word that is a delimiter is escaped, one that only holds one is not
    assert render_inline(["[", "a]b", "|", "]."], ["O", "B-PER", "O", "O"]) == "\\[ [ a]b | PER ] \\| \\]."


def test_a_stray_inside_tag_is_rendered_as_the_entity_conlleval_reads():
    tags = ["O", "I-PER", "I-PER", "O"]
    text = render_inline(["a", "b", "c", "d"], tags)
    assert text == "a [ b c | PER ] d"
    assert parse_generated(text, ["a", "b", "c", "d"], TYPES)["tags"] == ["O", "B-PER", "I-PER", "O"]
    assert spans(["O", "B-PER", "I-PER", "O"]) == spans(tags)


# ---- NER: outputs a model really writes ----------------------------------------------------------------
SOURCE = ["John", "Smith", "visited", "the", "U.S.", "in", "May", "."]


@pytest.mark.parametrize("output,tags,malformed,changed", [
    # a dropped word: the rest still aligns, the dropped word is O
    ("[ John Smith | PER ] visited [ U.S. | LOC ] in May .", ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O", "O"],
     False, True),
    # an entity whose first word was dropped still begins with B-
    ("[ Smith | PER ] visited the U.S. in May .", ["O", "B-PER", "O", "O", "O", "O", "O", "O"], False, True),
    # a changed word inside an entity (most of its characters match) keeps the entity
    ("[ Jon Smith | PER ] visited the U.S. in May .", ["B-PER", "I-PER", "O", "O", "O", "O", "O", "O"], False, True),
    # an extra word is skipped
    ("[ Mr John Smith | PER ] visited the U.S. in May . !", ["B-PER", "I-PER", "O", "O", "O", "O", "O", "O"],
     False, True),
    # a lower-casing tokenizer: the words count as the same
    ("[ john smith | per ] visited the u.s. in may .", ["B-PER", "I-PER", "O", "O", "O", "O", "O", "O"], False, False),
    # a tokenizer that decodes with spaces around punctuation
    ("[ John Smith | PER ] visited the [ U . S . | LOC ] in May .", ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O", "O"],
     False, True),
    # WordPiece's clean-up glues punctuation to the closing bracket
    ("John Smith visited the U.S. in [ May | MISC ].", ["O", "O", "O", "O", "O", "O", "B-MISC", "O"], False, False),
    # a type spread over tokens by decoding
    ("John Smith visited the [ U.S. | L OC ] in May .", ["O", "O", "O", "O", "B-LOC", "O", "O", "O"], False, False),
    # unknown type: malformed, its words plain, the type name no word
    ("[ John Smith | PERSON ] visited the U.S. in May .", ["O"] * 8, True, False),
    # never closed
    ("[ John Smith visited the U.S. in May .", ["O"] * 8, True, False),
    # a second bracket before the first closed: the inner entity counts
    ("[ John [ Smith | PER ] visited the U.S. in May .", ["O", "B-PER", "O", "O", "O", "O", "O", "O"], True, False),
    # a closing bracket or separator out of place, an empty entity
    ("John ] Smith | visited [ | PER ] the U.S. in May .", ["O"] * 8, True, False),
    # a separator without its closing bracket: the would-be type is a word
    ("[ John Smith | PER visited the U.S. in May .", ["O"] * 8, True, True),
    # nothing, or nothing of the source
    ("", ["O"] * 8, False, True),
    ("[ [ [ | | ] ] ]", ["O"] * 8, True, True),
    ("zzz qqq [ xxx | PER ]", ["O"] * 8, False, True),
])
def test_broken_outputs_parse_to_one_tag_per_source_word(output, tags, malformed, changed):
    assert parse_generated(output, SOURCE, TYPES) == {"tags": tags, "malformed": malformed, "words_changed": changed}


def test_parse_never_raises_on_arbitrary_text():
    import random

    rng = random.Random(0)
    alphabet = ["[", "]", "|", "\\[", "PER", "LOC", "John", "Smith", "the", ".", "U.S.", "", "  ", "[[", "|]"]
    for _ in range(500):
        text = " ".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        parsed = parse_generated(text, SOURCE, TYPES)
        assert len(parsed["tags"]) == len(SOURCE)
        assert all(t == "O" or t[2:] in TYPES for t in parsed["tags"])


def test_parse_inline_keeps_entity_numbers_apart():
    words, marks, malformed = parse_inline("[ A | PER ] [ B | PER ] C", TYPES)
    assert words == ["A", "B", "C"] and marks == [("PER", 1), ("PER", 2), None] and not malformed
    assert align_tags(["A", "B", "C"], words, marks) == (["B-PER", "B-PER", "O"], True)


# ---- RE: prompt and label parse ------------------------------------------------------------------------
LABELS = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other", "Product-Producer(e2,e1)"]


@pytest.mark.parametrize("output,label,parsed", [
    ("Cause-Effect(e2,e1)", "Cause-Effect(e2,e1)", True),
    ("  Other\n", "Other", True),
    ("cause-effect (e2, e1)", "Cause-Effect(e2,e1)", True),          # case and spaces
    ("Product_Producer(e2,e1).", "Other", False),                    # an underscore is no hyphen: no guess
    ('"Product-Producer(e2,e1)"', "Product-Producer(e2,e1)", True),   # quoted
    ("Cause-Effect(e1,e2)\nbecause the burst ...", "Cause-Effect(e1,e2)", True),  # first line
    ("Cause-Effect", "Other", False),                                 # no direction: not a label
    ("Cause-Effect(e1,e2) Other", "Other", False),
    ("", "Other", False),
])
def test_relation_labels_are_parsed_exact_then_normalised_else_other(output, label, parsed):
    assert parse_relation(output, LABELS, "Other") == (label, parsed)


def test_labels_equal_once_normalised_are_never_guessed_between():
    assert parse_relation("a(b)", ["A(B)", "a(B)"], "Other") == ("Other", False)
    assert parse_relation("a(B)", ["A(B)", "a(B)"], "Other") == ("a(B)", True)


def test_the_prompt_shows_the_entities_in_semeval_markup_that_reads_back():
    ex = {"text": "The company fabricates plastic chairs.", "head": [4, 11], "tail": [31, 37]}
    marked = inline_marked_text(ex)
    assert marked == "The <e1>company</e1> fabricates plastic <e2>chairs</e2>."
    assert parse_marked(marked) == (ex["text"], ex["head"], ex["tail"])
    tail_first = {"text": "chairs by the company", "head": [14, 21], "tail": [0, 6]}
    assert inline_marked_text(tail_first) == "<e2>chairs</e2> by the <e1>company</e1>"


# ---- end to end --------------------------------------------------------------------------------------------


import nlpkit  # noqa: E402
from nlpkit import ConfigError  # noqa: E402
from nlpkit.engine.backbone import Backbone  # noqa: E402
from nlpkit.testing import check_task  # noqa: E402
from nlpkit_tasks.ner import NerTask  # noqa: E402
from nlpkit_tasks.relation_extraction import RelationExtractionTask, official_scores  # noqa: E402

NER_SENTENCES = [
    ("John Smith lives in Paris .", "B-PER I-PER O O B-LOC O"),
    ("Acme Corp hired Mary .", "B-ORG I-ORG O B-PER O"),
    ("The EU met in Berlin on Monday .", "O B-ORG O O B-LOC O O O"),
]
RE_RECORDS = [
    ("The <e1>company</e1> fabricates plastic <e2>chairs</e2> .", "Product-Producer(e2,e1)"),
    ("The <e1>burst</e1> was caused by water <e2>pressure</e2> .", "Cause-Effect(e2,e1)"),
    ("The <e1>child</e1> was wrapped into the <e2>cradle</e2> .", "Other"),
    ("The <e1>storm</e1> caused the <e2>flood</e2> .", "Cause-Effect(e1,e2)"),
]
GENERATIVE_NER = {"mode": "generative", "max_length": 96, "max_target_length": 48, "max_new_tokens": 40}
GENERATIVE_RE = {"mode": "generative", "max_length": 128, "max_target_length": 16, "max_new_tokens": 12}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def conll(tmp_path, sentences=NER_SENTENCES) -> str:
    path = tmp_path / "ner.conll"
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(s.split(), g.split())) for s, g in sentences)
                    + "\n")
    return str(path)


def semeval(tmp_path, records=RE_RECORDS) -> str:
    path = tmp_path / "re.txt"
    path.write_text("".join(f'{i}\t"{text}"\n{label}\nComment:\n\n' for i, (text, label) in enumerate(records, 1)))
    return str(path)


def run(tmp_path, task: str, data: str, options: dict, backbone, steps: int, lr: float | None = None) -> dict:
    config = {"tasks": [{"type": task, "data": {"train": data, "dev": data}, "options": options}],
              "backbone": backbone, "output_dir": str(tmp_path / "run"),
              "trainer": {"max_steps": steps, "batch_size": 4, "eval_every": steps, **({"lr": lr} if lr else {})},
              "logging": {"progress": False, "log_every": steps}}
    return nlpkit.train(config)


def head_mode_keys(task_class, examples, prediction) -> set[str]:
    """The score keys of the head mode, from its own score() on head-mode predictions."""
    head = task_class()
    head.fit(examples)
    return set(head.score([prediction(ex) for ex in examples], examples))


def test_ner_on_the_mini_decoder_learns_the_inline_format_and_reloads(tmp_path):
    data = conll(tmp_path)
    result = run(tmp_path, "ner", data, GENERATIVE_NER, {"spec": "mini-decoder", "vocab_size": 400}, 40, 3e-3)
    recorded = result.metrics["tasks"]["ner"]
    assert (recorded["f1"], recorded["unparsed_outputs"], recorded["changed_outputs"]) == (100.0, 0, 0)
    examples = list(NerTask().read(data))
    keys = head_mode_keys(NerTask, examples, lambda ex: {"tags": ex["tags"], "entities": []})
    assert keys <= set(recorded) and set(recorded) - keys == {"unparsed_outputs", "changed_outputs",
                                                               "outputs_at_limit"}
    pipe = nlpkit.load(result.output_dir)
    assert pipe.model.backbone.kind == "decoder" and type(pipe.model.heads["ner"]).__name__ == "CausalSftHead"
    assert pipe.evaluate(data) == {k: v for k, v in recorded.items()}
    outputs = pipe.predict("John Smith lives in Paris .")
    assert outputs["output"] == "[ John Smith | PER ] lives in [ Paris | LOC ] ."
    assert outputs["entities"] == [{"type": "PER", "text": "John Smith", "start": 0, "end": 10},
                                   {"type": "LOC", "text": "Paris", "start": 20, "end": 25}]
    assert pipe.format(outputs) == "    0-10    PER    John Smith\n   20-25    LOC    Paris"
    assert pipe.predict("John Smith lives in Paris .", num_beams=2)["tags"] == outputs["tags"]


def test_relation_extraction_on_the_mini_decoder_writes_labels_and_reloads(tmp_path):
    data = semeval(tmp_path)
    result = run(tmp_path, "relation-extraction", data, GENERATIVE_RE, {"spec": "mini-decoder", "vocab_size": 400},
                 80, 3e-3)
    recorded = result.metrics["tasks"]["relation-extraction"]
    assert (recorded["macro_f1"], recorded["accuracy"], recorded["unparsed_outputs"]) == (100.0, 100.0, 0)
    examples = list(RelationExtractionTask().read(data))
    keys = head_mode_keys(RelationExtractionTask, examples, lambda ex: {"relation": ex["label"]})
    assert set(recorded) - keys == {"unparsed_outputs", "outputs_at_limit"}
    pipe = nlpkit.load(result.output_dir)
    assert pipe.evaluate(data) == recorded
    pred = pipe.predict(RE_RECORDS[0][0])
    assert (pred["relation"], pred["output"], pred["parsed"]) == ("Product-Producer(e2,e1)",) * 2 + (True,)
    assert pipe.format(pred) == 'Product-Producer(e2,e1): Product = "chairs" (e2) -> Producer = "company" (e1)'
    assert "[E1]" not in pipe.model.backbone.tokenizer.get_vocab()  # the prompt's markup is plain text
    from nlpkit.apps.export import export

    exported = export(result.output_dir, "transformers", tmp_path / "export")  # no standard class: the fallback
    assert exported.written == {"relation-extraction": "backbone + heads (safetensors)"}
    assert "parses back" in exported.notes["relation-extraction"]


@pytest.mark.parametrize("task_class,data,options", [
    (NerTask, conll, GENERATIVE_NER),
    (RelationExtractionTask, semeval, GENERATIVE_RE),
])
def test_the_plugin_contract_holds_in_generative_mode_on_the_mini_decoder(tmp_path, task_class, data, options):
    path = data(tmp_path)
    report = check_task(task_class, path, path, options=options, backbone={"spec": "mini-decoder", "vocab_size": 400},
                        max_steps=2, batch_size=4)
    assert report.passed, report


CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def llama_folder(tmp_path, texts) -> str:
    """A tiny random Llama with a byte-level BPE tokenizer (BOS, EOS, no pad token) and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(texts) * 10, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path / "llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_ner_on_a_tiny_llama_folder_with_a_chat_template_saves_and_reloads(tmp_path):
    data = conll(tmp_path)
    task = NerTask()
    folder = llama_folder(tmp_path, task._generative_texts(list(task.read(data))))
    result = run(tmp_path, "ner", data, {**GENERATIVE_NER, "prompt_format": "chat"}, {"spec": folder}, 4)
    recorded = result.metrics["tasks"]["ner"]
    first, again = nlpkit.load(result.output_dir), nlpkit.load(result.output_dir)
    gen = first.task("ner").strategy.generator
    assert (gen.kind, gen.format) == ("decoder", "chat")
    assert gen.prompt("A b .").startswith("<s><|user|>\nCopy the sentence, marking entities (LOC, ORG, PER)")
    assert first.evaluate(data) == recorded == again.evaluate(data)
    sentences = [s for s, _ in NER_SENTENCES]
    outputs = first.predict(sentences)
    assert outputs == again.predict(sentences)
    assert [len(o["tags"]) for o in outputs] == [len(s.split()) for s in sentences]


def test_ner_on_an_encoder_generates_through_the_seq2seq_head(tmp_path):
    data = conll(tmp_path)
    result = run(tmp_path, "ner", data, GENERATIVE_NER, {"spec": "mini", "vocab_size": 400}, 2)
    pipe = nlpkit.load(result.output_dir)
    assert pipe.model.backbone.kind == "encoder" and type(pipe.model.heads["ner"]).__name__ == "Seq2SeqHead"
    assert pipe.evaluate(data) == result.metrics["tasks"]["ner"]
    assert pipe.predict(["John Smith lives in Paris ."]) == nlpkit.load(result.output_dir).predict(
        ["John Smith lives in Paris ."])


# ---- the golden check: a perfect output scores 100 through the head mode's scorer ------------------------
def wordpiece_backbone(texts) -> Backbone:
    """A tiny random uncased BERT whose WordPiece decoding spaces out punctuation ("u. s." for "U.S.")."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w.lower() for t in texts for w in t.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz.,()[]|-"]
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))}, do_lower_case=True)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64), add_pooling_layer=False)
    return Backbone(model, tok, "tiny-bert")


@pytest.mark.parametrize("tokenizer", ["byte-level BPE", "uncased WordPiece"])
def test_a_perfect_generated_output_scores_f1_100_through_the_same_scorer(tmp_path, tokenizer):
    sentences = NER_SENTENCES + [("U.S. troops left Kabul ( Afghanistan ) .", "B-LOC O O B-LOC O B-LOC O O")]
    data = conll(tmp_path, sentences)
    task = NerTask(options=GENERATIVE_NER)
    examples = list(task.read(data))
    task.fit(examples)
    texts = list(task._generative_texts(examples))
    backbone = Backbone.create("mini-decoder", texts, vocab_size=400) if tokenizer == "byte-level BPE" \
        else wordpiece_backbone(texts)
    task.setup(backbone)
    targets = [render_inline(ex["tokens"], ex["tags"]) for ex in examples]
    outputs = [(backbone.tokenizer(t, add_special_tokens=False)["input_ids"], False) for t in targets]
    predictions = task.decode(examples, task.encode(examples), outputs)
    scores = task.score(predictions, examples)
    assert (scores["f1"], scores["precision"], scores["recall"], scores["unparsed_outputs"]) == (100.0, 100.0, 100.0, 0)
    assert [p["tags"] for p in predictions] == [ex["tags"] for ex in examples]
    if tokenizer == "uncased WordPiece":  # what it decodes differs from the source, and still aligns
        assert scores["changed_outputs"] > 0 and "u. s." in predictions[-1]["output"]
    head = NerTask()
    head.fit(examples)
    perfect_head = head.score([{"tags": ex["tags"]} for ex in examples], examples)
    assert {k: v for k, v in scores.items() if k in perfect_head} == perfect_head


def test_a_perfect_generated_relation_scores_100_through_the_official_scorer(tmp_path):
    data = semeval(tmp_path)
    task = RelationExtractionTask(options=GENERATIVE_RE)
    examples = list(task.read(data))
    task.fit(examples)
    backbone = Backbone.create("mini-decoder", list(task._generative_texts(examples)), vocab_size=400)
    task.setup(backbone)
    outputs = [(backbone.tokenizer(ex["label"], add_special_tokens=False)["input_ids"], False) for ex in examples]
    outputs[-1] = (backbone.tokenizer("no idea", add_special_tokens=False)["input_ids"], False)  # unparsable
    predictions = task.decode(examples, task.encode(examples), outputs)
    scores = task.score(predictions, examples)
    gold = {i: ex["label"] for i, ex in enumerate(examples)}
    assert scores["unparsed_outputs"] == 1 and predictions[-1]["relation"] == "Other"
    expected = official_scores(gold, {**gold, len(examples) - 1: "Other"})
    assert {k: scores[k] for k in expected} == expected and scores["macro_f1"] < 100


# ---- options -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_class", [NerTask, RelationExtractionTask])
def test_generation_options_are_checked_and_refused_in_head_mode(task_class):
    name = task_class.type_name
    with pytest.raises(ConfigError, match=rf"tasks\.{name}\.options\.num_beams: is an option of mode=generative"):
        task_class(options={"num_beams": 4})
    with pytest.raises(ConfigError, match=rf"tasks\.{name}\.options\.max_target_length: must be between 2"):
        task_class(options={"mode": "generative", "max_target_length": 1})
    with pytest.raises(ConfigError, match=rf"tasks\.{name}\.options\.mode"):
        task_class(options={"mode": "generate"})
    head, generative = task_class(), task_class(options={"mode": "generative"})
    assert (head.generative, generative.generative) == (False, True)
    assert "decoder" in generative.backbone_kinds
