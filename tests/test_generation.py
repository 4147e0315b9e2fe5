"""Generation on the shared backbone: the seq2seq head on an encoder-only backbone (tied decoder) and on
a pretrained-style encoder-decoder (a tiny random T5 built offline in a temp folder)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import nlpkit
from nlpkit.engine.backbone import Backbone
from nlpkit.apps.cli import main as cli
from nlpkit.sdk.heads import Seq2SeqHead

from conftest import tiny_config

SENTENCES = ["the dog sees the cat .", "a red bird sings .", "my old house is big .", "der Hund sieht die Katze .",
             "ein roter Vogel singt .", "mein altes Haus ist groß ."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return Backbone.create("mini", SENTENCES * 3, vocab_size=300).eval()  # no dropout: outputs comparable


def batch_of(backbone, texts):
    enc = backbone.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# ---- encoder-only backbone: a decoder head built on it ---------------------------------------------
def test_decoder_head_shares_the_backbone_embeddings(backbone):
    head = Seq2SeqHead(backbone, decoder_layers=1)
    shared = backbone.model.get_input_embeddings().weight
    assert head.decoder.get_input_embeddings().weight is shared
    assert head.decoder.get_output_embeddings().weight is shared
    assert head.decoder.config.add_cross_attention and head.decoder.config.is_decoder
    assert head.decoder.config.num_hidden_layers == 1
    # one matrix, counted once by the optimizer
    from nlpkit.engine.model import MultiTaskModel

    model = MultiTaskModel(backbone, {"t": head})
    assert sum(p is shared for p in model.parameters()) == 1


def test_teacher_forcing_loss_ignores_padding(backbone):
    head = Seq2SeqHead(backbone, decoder_layers=1, dropout=0.0).eval()
    batch = batch_of(backbone, SENTENCES[:2])
    labels = torch.tensor([[10, 11, 12, 6], [13, 6, -100, -100]])
    loss = head(backbone, {**batch, "labels": labels})["loss"]
    # the second row alone, without padding, has the same per-token losses
    one = head(backbone, {k: v[1:2] for k, v in batch.items()} | {"labels": labels[1:2, :2]})
    first = head(backbone, {k: v[:1] for k, v in batch.items()} | {"labels": labels[:1]})
    assert torch.isclose(loss, (first["loss"] * 4 + one["loss"] * 2) / 6, atol=1e-5)


def test_greedy_matches_a_manual_argmax_loop_and_beams_batch(backbone):
    torch.manual_seed(1)
    head = Seq2SeqHead(backbone, decoder_layers=2, dropout=0.0).eval()
    texts = ["the dog sees the cat .", "ein roter Vogel singt ."]
    batch = batch_of(backbone, texts)
    greedy = head.generate(backbone, batch, num_beams=1, max_new_tokens=6)
    # manual greedy loop with full recomputation, row 1 (the padded one in the batch)
    hidden = backbone.encode(batch["input_ids"][1:2], batch["attention_mask"][1:2])
    ids = torch.tensor([[head.tokens.start]])
    for _ in range(6):
        logits = head.decoder(input_ids=ids, encoder_hidden_states=hidden,
                              encoder_attention_mask=batch["attention_mask"][1:2]).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        if ids[0, -1] == head.tokens.eos:
            break
    n = ids.size(1) - 1
    assert greedy[1, :n].tolist() == ids[0, 1:].tolist()
    # beam search over a batch gives what it gives one input at a time
    beams = head.generate(backbone, batch, num_beams=4, max_new_tokens=6, length_penalty=0.8)
    for i, text in enumerate(texts):
        alone = head.generate(backbone, batch_of(backbone, [text]), num_beams=4, max_new_tokens=6, length_penalty=0.8)
        assert beams[i, : alone.size(1)].tolist() == alone[0].tolist()


def test_no_repeat_ngram_size_is_applied(backbone):
    torch.manual_seed(2)
    head = Seq2SeqHead(backbone, decoder_layers=1, dropout=0.0).eval()
    with torch.no_grad():  # make one token overwhelmingly likely everywhere: plain greedy repeats it
        head.decoder.cls.predictions.bias.zero_()
        head.decoder.cls.predictions.bias[42] = 100.0
    batch = batch_of(backbone, ["the dog sees the cat ."])
    assert head.generate(backbone, batch, max_new_tokens=5)[0].tolist() == [42] * 5
    blocked = head.generate(backbone, batch, max_new_tokens=5, no_repeat_ngram_size=1)[0].tolist()
    assert blocked.count(42) == 1


def test_output_length_limit_is_logged_and_warned(caplog):
    t = nlpkit.get_task_class("translation")(options={"max_new_tokens": 10})
    at_limit = [{"text": "x", "tokens": 10, "at_limit": True}, {"text": "y", "tokens": 9, "at_limit": False}]
    with caplog.at_level(logging.WARNING):
        stats = t.strategy.stats(at_limit)
    assert stats == {"num_beams": 1, "max_new_tokens": 10, "mean_output_tokens": 9.5, "outputs_at_limit": 50.0}
    assert "at the limit max_new_tokens=10" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        t.strategy.stats([{"text": "x", "tokens": 4, "at_limit": False}])
    assert caplog.text == ""


def test_generation_and_encoder_tasks_share_one_backbone(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "t.en").write_text("the dog .\na cat .\n")
    (data / "t.de").write_text("der Hund .\neine Katze .\n")
    ner = Path(nlpkit.get_task_class("ner")().default_data()["dev"])
    config = tiny_config("ner", tmp_path, max_steps=2, batch_size=2)
    config["tasks"] = [{"type": "ner", "data": {"train": str(ner), "dev": str(ner)}},
                       {"type": "translation", "data": {"train": str(data / "t"), "dev": str(data / "t")},
                        "options": {"max_new_tokens": 3, "decoder_layers": 1}}]
    result = nlpkit.train(config)
    assert set(result.metrics["tasks"]) == {"ner", "translation"}
    pipe = nlpkit.load(result.output_dir)
    assert isinstance(pipe.predict("the dog .", task="translation")["text"], str)
    shared = pipe.model.backbone.model.get_input_embeddings().weight
    assert pipe.model.heads["translation"].decoder.get_output_embeddings().weight is shared


# ---- encoder-decoder backbone: a tiny random T5 from a local folder --------------------------------
def make_t5(folder: Path, texts: list[str]) -> None:
    """A T5 architecture with random weights and a BPE tokenizer trained here: no hub, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "</s>", "<unk>"],
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    config = T5Config(vocab_size=len(fast), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2,
                      num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t5")
    pairs = [("the dog sees the cat .", "der Hund sieht die Katze ."), ("a cat sees the dog .", "eine Katze sieht den Hund ."),
             ("the bird sees a cat .", "der Vogel sieht eine Katze ."), ("a dog sees the bird .", "ein Hund sieht den Vogel .")]
    (tmp / "pairs.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs))
    texts = [x for p in pairs for x in p] + ["translate English to German:"]
    make_t5(tmp / "t5", texts * 20)
    config = tiny_config("translation", tmp, max_steps=60, batch_size=4, lr=3e-3, eval_every=60, log_every=10)
    config["tasks"][0]["data"] = {"train": str(tmp / "pairs.tsv"), "dev": str(tmp / "pairs.tsv")}
    config["tasks"][0]["options"] = {"max_new_tokens": 12}
    config["backbone"] = {"spec": str(tmp / "t5")}
    return nlpkit.train(config), pairs


def test_t5_folder_trains_and_generates_through_its_own_decoder(t5_run):
    result, pairs = t5_run
    log = [json.loads(line) for line in (result.output_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss/translation"] for r in log if "loss/translation" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    scores = result.metrics["tasks"]["translation"]
    assert scores["bleu"] > 50, scores  # four memorised pairs
    pipe = nlpkit.load(result.output_dir)
    task = pipe.task()
    assert pipe.model.backbone.kind == "encoder-decoder" and pipe.model.heads["translation"].decoder is None
    assert task.strategy.prefix == "translate English to German: "
    assert task.encode([{"source": "the dog"}])[0]["input_ids"][:4] == \
        pipe.model.backbone.tokenizer("translate English to German: the dog")["input_ids"][:4]
    greedy = pipe.predict([en for en, _ in pairs])
    beams = pipe.predict([en for en, _ in pairs], num_beams=4)
    assert sum(p["text"] == de for p, (_, de) in zip(greedy, pairs)) >= 2
    assert len(beams) == 4 and all(isinstance(p["text"], str) for p in beams)


def test_t5_checkpoint_reloads_to_identical_predictions(t5_run, capsys):
    result, pairs = t5_run
    first = [p["text"] for p in nlpkit.load(result.output_dir).predict([en for en, _ in pairs])]
    assert cli(["predict", str(result.output_dir), pairs[0][0], "--num-beams", "2"]) == 0
    capsys.readouterr()
    assert cli(["predict", str(result.output_dir), pairs[0][0], pairs[1][0], "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prediction"]["text"] for x in lines] == first[:2]


def test_prefix_option_auto_explicit_or_none(backbone):
    from nlpkit.apps.cli import build_config, _parser

    cls = nlpkit.get_task_class("translation")
    for value, expected in (("auto", ""), ("translate: ", "translate: "), (None, ""), ("", "")):
        t = cls(options={"prefix": value})
        t.setup(backbone)
        assert t.strategy.prefix == expected
    args, _ = _parser().parse_known_args(["train", "--task", "translation", "--option", "prefix="])
    assert build_config(args).tasks[0].options == {"prefix": None}
