"""Translation and summarization on decoder-only backbones: causal-LM supervised fine-tuning (the loss on the
target only), prompts (plain template, chat template, truncation of the source), left-padded generation, and
whole runs through nlpkit.train / nlpkit.load / the CLI on tiny random Llama, Qwen2, Gemma3 and GPT-2 models
built here, offline."""
from __future__ import annotations

import json
import logging

import pytest
import torch

import nlpkit
from nlpkit.engine.backbone import Backbone
from nlpkit.apps.cli import main as cli
from nlpkit.sdk.data import pad_encodings
from nlpkit.sdk.errors import ConfigError
from nlpkit.sdk.heads import CausalSftHead

from test_causal_lm import gpt2_style_tokenizer

KINDS = ["llama", "qwen2", "gemma3", "gpt2"]
PAIRS = [("the cat sleeps", "die Katze schläft"), ("the dog runs", "der Hund läuft"),
         ("a bird sings", "ein Vogel singt"), ("the house is big", "das Haus ist groß")]
#: the tokenizer sees the template's words too, so prompts stay short in a 400-token vocabulary
TEXTS = [s for p in PAIRS for s in p] * 10 + ["Translate English to German.\nGerman:", "Summarize the text.\nSummary:"] * 10
CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
OPTIONS = {"max_length": 64, "max_target_length": 24, "max_new_tokens": 12}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tokenizer_for(kind: str, chat: bool = False):
    """GPT-2 / Qwen ship no BOS (Qwen) or BOS = EOS (GPT-2), and none of them a pad token."""
    tok = gpt2_style_tokenizer(TEXTS, vocab=400, bos=kind in ("llama", "gemma3"))
    if chat:
        tok.chat_template = CHAT
    return tok


def tiny_model(kind: str, tok, **extra):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

    eos = tok.eos_token_id
    if kind == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=eos,
                            eos_token_id=eos, **extra)
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "gemma3": Gemma3TextConfig}[kind]
        if kind == "gemma3":
            extra = {"head_dim": 16, **extra}
        config = cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                     bos_token_id=tok.bos_token_id, eos_token_id=eos, **extra)
    model = AutoModelForCausalLM.from_config(config)
    assert kind != "gemma3" or type(model).__name__ == "Gemma3ForCausalLM"
    return model


def backbone_of(kind: str, chat: bool = False, **extra) -> Backbone:
    tok = tokenizer_for(kind, chat)
    return Backbone(tiny_model(kind, tok, **extra).eval(), tok, f"tiny-{kind}")  # eval: no dropout


def saved_folder(tmp_path, kind: str, chat: bool = False) -> str:
    tok = tokenizer_for(kind, chat)
    folder = tmp_path / kind
    tiny_model(kind, tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def task_on(backbone: Backbone, kind: str = "translation", **options):
    task = nlpkit.get_task_class(kind)(options={**OPTIONS, **options})
    task.setup(backbone)
    return task


def examples(pairs=PAIRS, labelled=True):
    return [{"source": s, **({"target": t} if labelled else {}), "line": i} for i, (s, t) in enumerate(pairs, 1)]


# ---- the loss ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_the_loss_is_transformers_causal_lm_loss_with_the_prompt_masked(kind):
    extra = {"final_logit_softcapping": 1.0} if kind == "gemma3" else {}  # lm_logits must cap like the model
    backbone = backbone_of(kind, **extra)
    task = task_on(backbone)
    features = task.encode(examples())
    head = task.build_head(backbone)
    assert isinstance(head, CausalSftHead) and not list(head.parameters())  # the decoder's own LM head
    seen = []
    lm_logits = backbone.lm_logits
    backbone.lm_logits = lambda hidden: seen.append(hidden.shape[0]) or lm_logits(hidden)
    ours = head(backbone, task.collate(features))["loss"]
    del backbone.lm_logits
    targets = sum(len(f["labels"]) for f in features)
    assert seen == [targets]  # the vocabulary projection runs at the target positions only

    # the Hugging Face way: one right-padded sequence per pair, the prompt's labels -100
    rows = [f["input_ids"] + f["labels"] for f in features]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), backbone.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (f, row) in enumerate(zip(features, rows)):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        labels[i, len(f["input_ids"]):len(row)] = torch.tensor(f["labels"])
    theirs = backbone.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    everything = backbone.model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    assert not torch.allclose(ours, everything, atol=1e-3)  # the prompt is really left out


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> float:
    """The label-smoothed loss written out (float64), independent of F.cross_entropy: per position
    (1 - eps) * -log p(target) + eps * mean over the vocabulary of -log p(c); the mean over the positions whose
    target is not -100."""
    logits, targets = logits.detach().double().reshape(-1, logits.size(-1)), targets.reshape(-1)
    total, n = 0.0, 0
    for row, y in zip(logits, targets.tolist()):
        if y == -100:
            continue
        logp = row - torch.logsumexp(row, 0)
        total += float((1 - eps) * -logp[y] + eps * -logp.mean())
        n += 1
    assert n > 0
    return total / n


def test_label_smoothing_value_of_the_causal_loss_on_fixed_logits():
    """target_loss on hand-made logits (the projection is the identity): the closed form over the positions whose
    next token is a target; the prompt and padding positions (-100) count neither in the sum nor in the mean."""
    from types import SimpleNamespace

    from nlpkit.sdk.heads.causal_sft import target_loss

    torch.manual_seed(3)
    vocab = 7
    hidden = torch.randn(2, 6, vocab) * 3
    marks = torch.tensor([[-100, -100, 4, 1, 6, -100],  # prompt, a 3-token target, padding
                          [-100, -100, -100, -100, 2, 0]])
    identity = SimpleNamespace(lm_logits=lambda h: h)
    # position t predicts marks[t + 1]: each position's target is the next mark (the last position predicts nothing)
    shifted = torch.cat([marks[:, 1:], torch.full((2, 1), -100)], 1)
    assert int((shifted != -100).sum()) == 5
    for eps in (0.0, 0.1, 0.3):
        got = float(target_loss(identity, hidden, marks, label_smoothing=eps))
        assert got == pytest.approx(smoothed_cross_entropy(hidden, shifted, eps), rel=1e-6, abs=1e-6), eps
    # smoothing changes the value (the closed form above says by how much)
    plain = float(target_loss(identity, hidden, marks))
    assert float(target_loss(identity, hidden, marks, label_smoothing=0.1)) != pytest.approx(plain, rel=1e-3)
    # the logits at ignored positions do not matter at all
    changed = hidden.clone()
    changed[0, 0] += 50  # predicts marks[0, 1] = -100
    changed[1, :3] -= 20  # predict -100 targets
    changed[:, -1] += 9  # the last position predicts nothing
    assert float(target_loss(identity, changed, marks, label_smoothing=0.1)) == pytest.approx(
        float(target_loss(identity, hidden, marks, label_smoothing=0.1)), abs=1e-6)


def test_label_smoothing_value_of_the_seq2seq_loss():
    """The encoder-decoder head (a from-scratch mini encoder and its built decoder): the loss it returns equals the
    closed form over its own logits and the batch's labels, padding labels (-100) left out."""
    from nlpkit.sdk.heads.seq2seq import Seq2SeqHead

    pairs = PAIRS + [("the cat", "die Katze schläft heute nicht im großen Haus")]  # ragged: -100 padding
    backbone = Backbone.create("mini", [x for p in pairs for x in p] * 5, vocab_size=300)
    backbone.eval()
    for eps in (0.0, 0.2):
        task = task_on(backbone, label_smoothing=eps)
        batch = task.collate(task.encode(examples(pairs)))
        assert (batch["labels"] == -100).any()
        head = task.build_head(backbone)
        assert isinstance(head, Seq2SeqHead) and head.label_smoothing == eps
        head.eval()
        with torch.no_grad():
            out = head(backbone, batch)
        assert float(out["loss"]) == pytest.approx(smoothed_cross_entropy(out["logits"], batch["labels"], eps),
                                                   rel=1e-5)


def test_targets_are_the_text_tokens_then_eos_without_bos():
    backbone = backbone_of("llama")
    tok = backbone.tokenizer
    task = task_on(backbone, max_target_length=4)
    long = "die Katze schläft und der Hund läuft"
    features = task.encode(examples([("a b", "der Hund"), ("c d", long)]))
    assert features[0]["labels"] == tok("der Hund", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.bos_token_id not in features[0]["labels"][:-1]  # (BOS = EOS in this tokenizer)
    assert features[1]["labels"] == tok(long, add_special_tokens=False)["input_ids"][:3] + [tok.eos_token_id]
    assert "labels" not in task.encode(examples(labelled=False))[0]


# ---- prompts -----------------------------------------------------------------------------------------------
def test_the_plain_prompt_is_bos_instruction_source_and_cue():
    backbone = backbone_of("llama")
    tok = backbone.tokenizer
    task = task_on(backbone, prefix="translate: ")  # a T5 prefix: not used on a decoder
    assert task.strategy.generator.format == "plain" and task.strategy.prefix == ""
    text = "Translate English to German.\nthe cat sleeps\nGerman:"
    ids = task.encode(examples())[0]["input_ids"]
    assert ids == [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    french = task_on(backbone, "translation", source_lang="fr", target_lang="en")
    assert french.strategy.generator.prompt("x").endswith("Translate French to English.\nx\nEnglish:")
    summary = task_on(backbone, "summarization")
    assert summary.strategy.generator.prompt("A long text.") == "<|endoftext|>Summarize the text.\nA long text.\nSummary:"
    qwen = task_on(backbone_of("qwen2"))  # no BOS token: the prompt starts with the instruction
    assert qwen.encode(examples())[0]["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_the_chat_template_frames_the_prompt_when_the_tokenizer_has_one():
    backbone = backbone_of("qwen2", chat=True)
    tok = backbone.tokenizer
    task = task_on(backbone)
    assert task.strategy.generator.format == "chat"  # prompt_format auto
    messages = [{"role": "user", "content": "Translate English to German.\n\nthe cat sleeps"}]
    expected = tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert task.encode(examples())[0]["input_ids"] == list(expected)
    assert task_on(backbone, prompt_format="plain").strategy.generator.prompt("x").endswith("\nx\nGerman:")
    with pytest.raises(ConfigError, match="prompt_format: chat.*no chat_template"):
        task_on(backbone_of("qwen2"), prompt_format="chat")


@pytest.mark.parametrize("chat", [False, True])
def test_a_long_source_is_cut_and_the_template_kept(chat, caplog):
    backbone = backbone_of("llama", chat=chat)
    tok = backbone.tokenizer
    task = task_on(backbone, max_length=40)
    gen = task.strategy.generator
    long = " ".join(["the cat sleeps and the dog runs"] * 20)
    with caplog.at_level(logging.WARNING):
        ids = task.encode(examples([("short", "kurz"), (long, "lang")]))[1]["input_ids"]
    assert "1 of 2 source(s) longer than max_length=40 tokens were truncated (first at line/record 2)" in caplog.text
    assert 35 <= len(ids) <= 40
    text = tok.decode(ids)
    frame = gen.prompt("")  # [BOS] + the text before the source + the text after it
    assert text.startswith(frame[:len(frame) - len(gen.tail_text)] + "the cat sleeps and")
    assert text.endswith(gen.tail_text) and gen.tail_text.strip()  # the cue / generation prompt survives


def test_prompt_and_target_stay_within_the_model_positions(caplog):
    backbone = backbone_of("gpt2")  # learned positions: 128
    task = task_on(backbone, max_length=500, max_target_length=24, max_new_tokens=24)
    long = " ".join(["the cat sleeps"] * 100)
    with caplog.at_level(logging.WARNING):
        ids = task.encode(examples([(long, "x")]))[0]["input_ids"]
    assert len(ids) <= 128 - 24 and "lowered so that prompt + target fit the backbone's 128 positions" in caplog.text
    with pytest.raises(ConfigError, match="128 positions.*lower max_target_length"):
        task_on(backbone, max_length=500, max_target_length=120)


# ---- generation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_left_or_right_padded_prompts_generate_what_each_prompt_does_alone(kind):
    backbone = backbone_of(kind)
    task = task_on(backbone, max_new_tokens=8)
    head = task.build_head(backbone)
    items = examples([("the cat sleeps", ""), ("a bird sings and the dog runs in the house", ""), ("hi", "")],
                     labelled=False)
    features = task.encode(items)
    left = task.collate(features)
    assert left["attention_mask"][:, -1].all() and not left["attention_mask"][:, 0].all()  # collated left-padded
    right = pad_encodings(features, backbone.tokenizer.pad_token_id)
    out = head.generate(backbone, left, max_new_tokens=8)
    assert out.shape == (3, 8)
    assert torch.equal(out, head.generate(backbone, right, max_new_tokens=8))
    for i, f in enumerate(features):
        alone = head.generate(backbone, task.collate([f]), max_new_tokens=8)
        assert alone[0].tolist() == out[i].tolist(), (kind, i)
    beams = task.predict_batch(head, backbone, left)
    assert len(beams) == 3 and all(len(ids) <= 8 for ids, _ in beams)


def test_generation_stops_at_eos_and_pads_the_finished_rows():
    backbone = backbone_of("llama")
    task = task_on(backbone, max_new_tokens=6)
    head = task.build_head(backbone)
    batch = task.collate(task.encode(examples(labelled=False)[:2]))
    free = head.generate(backbone, batch, max_new_tokens=6)[0].tolist()
    pad = backbone.tokenizer.pad_token_id
    k = next(k for k in range(1, 6) if free[k] not in free[:k])  # make a token the first row writes the EOS
    head.stop_ids = task.strategy.generator.stop_ids = [free[k]]
    out = head.generate(backbone, batch, max_new_tokens=6)
    assert out[0, :k + 1].tolist() == free[:k + 1] and out[0, k + 1:].eq(pad).all()
    ids, at_limit = task.predict_batch(head, backbone, batch)[0]
    assert ids == free[:k] and not at_limit


def test_no_repeat_ngrams_count_the_generated_tokens_only():
    from nlpkit.sdk.heads.causal_sft import NewTokensNoRepeat

    scores = NewTokensNoRepeat(1, prompt_width=2)(torch.tensor([[5, 6, 7]]), torch.zeros(1, 10))
    assert torch.isinf(scores[0, 7]) and torch.isfinite(scores[0, [5, 6]]).all()  # the prompt's 5, 6 stay allowed
    backbone = backbone_of("llama")
    task = task_on(backbone, max_new_tokens=8)
    head = task.build_head(backbone)
    batch = task.collate(task.encode(examples(labelled=False)))
    for row in head.generate(backbone, batch, max_new_tokens=8, no_repeat_ngram_size=1).tolist():
        row = [t for t in row if t != backbone.tokenizer.pad_token_id]
        assert len(row) == len(set(row))


# ---- whole runs --------------------------------------------------------------------------------------------
def run_config(tmp_path, spec, data, task="translation", steps=40, **options):
    return {"tasks": [{"type": task, "data": data, "options": {**OPTIONS, **options}}],
            "backbone": {"spec": spec},
            "trainer": {"max_steps": steps, "batch_size": 4, "lr": 1e-2, "eval_every": steps},
            "logging": {"progress": False, "log_every": 20},
            "output_dir": str(tmp_path / "run")}


NUMERIC = ("bleu", "chrf", "mean_output_tokens", "outputs_at_limit")


@pytest.mark.parametrize("kind,chat", [("llama", False), ("qwen2", True), ("gemma3", False), ("gpt2", False)])
def test_a_decoder_learns_translation_saves_reloads_and_predicts_the_same(tmp_path, kind, chat):
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{s}\t{t}\n" for s, t in PAIRS))
    data = {"train": str(train), "dev": str(train)}
    result = nlpkit.train(run_config(tmp_path, saved_folder(tmp_path, kind, chat), data, steps=60))
    recorded = result.metrics["tasks"]["translation"]
    assert recorded["bleu"] == pytest.approx(100) and recorded["outputs_at_limit"] == 0, recorded  # stops at EOS
    first, again = nlpkit.load(result.output_dir), nlpkit.load(result.output_dir)
    gen = first.task("translation").strategy.generator
    assert (first.model.backbone.kind, gen.format) == ("decoder", "chat" if chat else "plain")
    scores = first.evaluate(str(train))
    assert {k: scores[k] for k in NUMERIC} == pytest.approx({k: recorded[k] for k in NUMERIC}, rel=1e-6)
    sources = [s for s, _ in PAIRS]
    outputs = first.predict(sources)
    assert [o["text"] for o in outputs] == [t for _, t in PAIRS]
    assert outputs == again.predict(sources)
    assert [o["text"] for o in first.predict(sources, num_beams=3)] == [t for _, t in PAIRS]


def test_cli_trains_summarization_on_the_mini_decoder_and_predicts(tmp_path, capsys):
    run = tmp_path / "run"
    code = cli(["train", "--task", "summarization", "--backbone", "mini-decoder", "--max-steps", "3",
                "--batch-size", "8", "--option", "max_new_tokens=4", "--set", "backbone.vocab_size=400",
                "--output-dir", str(run), "--no-progress"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())["tasks"]["summarization"]
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum"} <= set(metrics) and metrics["mean_output_tokens"] <= 4
    assert nlpkit.load(run).model.backbone.kind == "decoder"
    capsys.readouterr()
    doc = "The Lions played the Owls in Almora on Monday. The Lions scored 2 goals. The Owls scored 1 goal."
    assert cli(["predict", str(run), doc]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_encoder_runs_keep_seq2seq_head_and_prefix():
    from nlpkit.sdk.heads import Seq2SeqHead

    backbone = Backbone.create("mini", TEXTS, vocab_size=300)
    task = task_on(backbone, prefix="translate: ")
    assert isinstance(task.build_head(backbone), Seq2SeqHead) and task.strategy.prefix == "translate: "
    ids = task.encode(examples())[0]["input_ids"]
    assert ids == backbone.tokenizer("translate: the cat sleeps")["input_ids"]  # as before: prefix + source


def test_translation_on_a_decoder_keeps_the_plugin_contract():
    from nlpkit.testing import check_task

    report = check_task(nlpkit.get_task_class("translation"), backbone="mini-decoder",
                        options={"max_length": 128, "max_target_length": 32, "max_new_tokens": 4})
    assert report.passed, report.summary()
