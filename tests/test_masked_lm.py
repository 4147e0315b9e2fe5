"""The masked-lm plugin: masking statistics (15%, 80/10/10, never specials or padding, whole words),
deterministic evaluation masks, the gathered projection, the tied decoder, training / saving / reloading
on a from-scratch preset and continued pretraining of a BERT folder."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import nlpkit
from nlpkit import ConfigError, DataError
from nlpkit.engine.backbone import PRESETS, Backbone, train_tokenizer
from nlpkit.sdk.corpus import TextCorpus
from nlpkit_tasks.masked_lm import (MaskedLmHead, MaskedLmOptions, MaskedLmTask, choose_masks, eval_draws,
                                    special_ids)

WORDS = ("the river runs past old mills where millers ground wheat into flour while children watched "
         "boats drift slowly toward the harbour under grey northern skies").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) for _ in range(n)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Token caches go to the test's folder, not ~/.cache."""
    monkeypatch.setenv("NLPKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("corpus")
    lines = sentences(240)
    (folder / "train.txt").write_text("\n".join(lines[:200]) + "\n")
    (folder / "dev.txt").write_text("\n".join(lines[200:]) + "\n")
    return {"train": str(folder / "train.txt"), "dev": str(folder / "dev.txt")}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(sentences(200), 300)


def make_task(tokenizer, **options) -> tuple[MaskedLmTask, Backbone, MaskedLmHead]:
    """A task set up on a from-scratch mini backbone, with its head."""
    torch.manual_seed(0)
    preset = {k: v for k, v in PRESETS["mini"].items() if k != "vocab_size"}
    backbone = Backbone.from_scratch(preset, tokenizer, "mini")
    task = MaskedLmTask(options=options)
    task.setup(backbone)
    return task, backbone, task.build_head(backbone)


class Recording:
    """A backbone that remembers the (corrupted) input ids the head encodes, and returns zeros as hidden
    states instead of running the encoder (the masking tests count tokens; they need big batches fast)."""

    def __init__(self, backbone: Backbone):
        self.backbone, self.model, self.seen = backbone, backbone.model, []

    def encode(self, input_ids, attention_mask, token_type_ids=None):
        self.seen.append(input_ids.clone())
        return torch.zeros(*input_ids.shape, self.backbone.hidden_size)


# ---- masking ---------------------------------------------------------------------------------------
def test_masking_chooses_15_percent_of_real_tokens_and_replaces_80_10_10(tokenizer):
    task, backbone, head = make_task(tokenizer)
    specials = torch.tensor(special_ids(tokenizer))
    normal = head.candidates
    b, n = 256, 128
    ids = normal[torch.randint(len(normal), (b, n))]
    ids[:, 0], ids[:, 64] = tokenizer.cls_token_id, tokenizer.sep_token_id  # specials inside the block too
    attention = torch.ones(b, n, dtype=torch.long)
    attention[::2, 100:] = 0  # every other row padded
    ids[attention == 0] = tokenizer.pad_token_id
    head.train()
    recording = Recording(backbone)
    out = head(recording, {"input_ids": ids, "attention_mask": attention})
    corrupted = recording.seen[0]
    chosen = torch.zeros(b, n, dtype=torch.bool)
    chosen[out["rows"], out["cols"]] = True

    eligible = attention.bool() & ~torch.isin(ids, specials)
    assert not (chosen & ~eligible).any(), "a special token or padding was chosen"
    assert torch.equal(corrupted[~chosen], ids[~chosen]), "a position that was not chosen changed"
    assert abs(chosen.sum().item() / eligible.sum().item() - 0.15) < 0.01
    assert torch.equal(out["labels"], ids[chosen])  # labels are the original tokens, in row-major order

    picked, original = corrupted[chosen], ids[chosen]
    masked = (picked == tokenizer.mask_token_id).float().mean().item()
    replaced = (picked != tokenizer.mask_token_id) & (picked != original)
    kept = (picked == original).float().mean().item()
    assert abs(masked - 0.8) < 0.03 and abs(replaced.float().mean().item() - 0.1) < 0.02 and abs(kept - 0.1) < 0.02
    assert not torch.isin(picked[replaced], specials).any(), "a random replacement was a special token"
    assert torch.isfinite(out["loss"]) and out["loss"].item() > 0


def test_masking_split_follows_the_options(tokenizer):
    _, backbone, head = make_task(tokenizer, mask_replace_prob=0.0, random_replace_prob=1.0, mlm_probability=0.5)
    ids = head.candidates[torch.randint(len(head.candidates), (64, 64))]
    recording = Recording(backbone)
    head.train()
    out = head(recording, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    picked = recording.seen[0][out["rows"], out["cols"]]
    assert abs(len(picked) / ids.numel() - 0.5) < 0.03
    assert not (picked == tokenizer.mask_token_id).any()  # never the mask token: always a random one
    assert (picked != ids[out["rows"], out["cols"]]).float().mean() > 0.95


def test_whole_word_masking_masks_every_piece_of_a_chosen_word():
    torch.manual_seed(1)
    b, n = 64, 128
    ids = torch.randint(10, 100, (b, n))
    word_start = torch.rand(b, n) < 0.4  # words of one to several pieces
    word_start[:, 0] = True
    word_start[:, 1] = False  # a block that starts mid-word: the piece after [CLS] begins a word of its own
    eligible = torch.ones(b, n, dtype=torch.bool)
    eligible[:, 0] = eligible[:, -1] = eligible[:, 50] = False  # [CLS], [SEP], a separator inside
    options = MaskedLmOptions(whole_word_mask=True)
    _, chosen = choose_masks(ids, eligible, torch.rand(b, n, 3), options, 4, torch.arange(10, 100), word_start)
    assert not (chosen & ~eligible).any()
    words = chosen_words = 0
    for r in range(b):
        pieces: list[bool] = []
        for c in range(n + 1):
            starts = c == n or not eligible[r, c] or word_start[r, c] or not eligible[r, c - 1]
            if starts and pieces:  # the word that just ended: all its pieces chosen, or none
                assert all(pieces) or not any(pieces), f"row {r}: word ending at {c} partly masked: {pieces}"
                words += 1
                chosen_words += pieces[0]
                pieces = []
            if c < n and eligible[r, c]:
                pieces.append(bool(chosen[r, c]))
    assert abs(chosen_words / words - 0.15) < 0.03  # words, not tokens, are chosen at 15%
    multi = (word_start[:, 1:] == 0) & chosen[:, 1:] & eligible[:, 1:]
    assert multi.any(), "no continuation piece was masked: the test would not see partial words"


def test_whole_word_mask_reaches_the_head_from_real_text(tokenizer):
    task, backbone, head = make_task(tokenizer, whole_word_mask=True, max_length=32)
    features = task.encode(TextCorpus.from_texts(["unbelievably grandiose overachievers " * 6] * 4))
    batch = task.collate([features[i] for i in range(len(features))])
    assert batch["word_start"].dtype == torch.bool and not batch["word_start"].all()  # words of several pieces
    head.train()
    torch.manual_seed(3)
    out = head(backbone, batch)
    chosen = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    chosen[out["rows"], out["cols"]] = True
    ws = batch["word_start"]
    for r, c in zip(*chosen.nonzero(as_tuple=True)):
        if c + 1 < chosen.size(1) and not ws[r, c + 1] and batch["attention_mask"][r, c + 1]:
            assert chosen[r, c + 1], "the next piece of a chosen word was left unmasked"


# ---- evaluation and the head -----------------------------------------------------------------------
def test_evaluation_masks_depend_only_on_the_block(tokenizer):
    task, backbone, head = make_task(tokenizer, max_length=24, within_document=True)
    features = task.encode(TextCorpus.from_texts(sentences(12, seed=5)))
    assert len({len(features[i]["input_ids"]) for i in range(len(features))}) > 1  # different padding per batch
    backbone.eval(), head.eval()
    with torch.inference_mode():
        alone = task.predict_batch(head, backbone, task.collate([features[2], features[3]]))
        mixed = task.predict_batch(head, backbone, task.collate([features[i] for i in range(8)]))
        again = task.predict_batch(head, backbone, task.collate([features[i] for i in range(8)]))
    assert mixed == again
    for got, want in zip(alone, mixed[2:4]):
        assert got[1] == want[1] and got[2] == want[2] and got[0] == pytest.approx(want[0], rel=1e-5)
    head.train()  # training masks are fresh draws
    batch = task.collate([features[i] for i in range(8)])
    first, second = head(backbone, batch)["labels"], head(backbone, batch)["labels"]
    assert not torch.equal(first, second) if len(first) == len(second) else True


def test_projection_at_masked_positions_equals_the_full_projection(tokenizer):
    task, backbone, head = make_task(tokenizer, max_length=32)
    features = task.encode(TextCorpus.from_texts(sentences(20, seed=2)))
    batch = task.collate([features[i] for i in range(6)])
    backbone.eval(), head.eval()
    with torch.no_grad():
        out = head(backbone, batch)
        ids, attention = batch["input_ids"], batch["attention_mask"]
        draws = eval_draws(batch["block_index"], ids.size(1), 32)
        corrupted, chosen = choose_masks(ids, attention.bool() & ~head.special[ids], draws, task.options,
                                         tokenizer.mask_token_id, head.candidates)
        full = head.logits(backbone, backbone.encode(corrupted, attention))  # every position: (b, n, vocab)
    assert chosen.sum() == len(out["labels"]) > 0
    assert full.shape[-1] == len(tokenizer)
    torch.testing.assert_close(out["logits"], full[chosen], rtol=1e-5, atol=1e-5)
    loss = torch.nn.functional.cross_entropy(full[chosen], ids[chosen])
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5)


def test_decoder_is_the_input_embedding_tied_not_copied(tokenizer):
    _, backbone, head = make_task(tokenizer)
    assert set(head.state_dict()) == {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"}
    embedding = backbone.model.get_input_embeddings().weight
    hidden = torch.randn(3, backbone.hidden_size)
    before = head.logits(backbone, hidden).detach()
    with torch.no_grad():
        embedding[5] += 1.0
    after = head.logits(backbone, hidden).detach()
    changed = (before != after).any(0).nonzero().flatten().tolist()
    assert changed == [5]  # the embedding row is the output row
    head.train()
    ids = head.candidates[torch.randint(len(head.candidates), (4, 16))]
    out = head(backbone, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    out["loss"].backward()
    assert embedding.grad[out["labels"]].abs().sum() > 0  # the MLM loss trains the embedding as decoder


def test_a_batch_with_nothing_chosen_has_a_finite_zero_loss(tokenizer):
    _, backbone, head = make_task(tokenizer)
    ids = torch.tensor([[tokenizer.cls_token_id, tokenizer.sep_token_id]])
    head.train()
    out = head(backbone, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert out["loss"].item() == 0.0 and out["weights"].sum() == 0
    out["loss"].backward()  # the graph is whole: backward works and gives zero gradients
    assert head.dense.weight.grad is not None and head.dense.weight.grad.abs().sum() == 0


def test_loss_decreases_on_repeated_text(tokenizer):
    """One sentence per block (within_document): the model can learn every masked word from its context."""
    task, backbone, head = make_task(tokenizer, max_length=32, within_document=True)
    features = task.encode(TextCorpus.from_texts(["the river runs past old mills where millers ground wheat"] * 16))
    batch = task.collate([features[i] for i in range(len(features))])
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    backbone.train(), head.train()
    losses = []
    for _ in range(30):
        loss = head(backbone, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.1 * sum(losses[:5]) / 5, losses


# ---- decode, score, options, input ----------------------------------------------------------------
def test_decode_sums_blocks_per_document_and_scores_perplexity():
    task = MaskedLmTask()
    examples = [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    features = [{"example_index": 0}, {"example_index": 0}, {"example_index": 2}]
    predictions = task.decode(examples, features, [(2.0, 2, 1), (4.0, 3, 2), (1.0, 1, 1)])
    assert predictions == [{"nll": 6.0, "tokens": 5, "correct": 3}, {"nll": 0.0, "tokens": 0, "correct": 0},
                           {"nll": 1.0, "tokens": 1, "correct": 1}]
    scores = task.score(predictions, examples)
    assert scores["accuracy"] == pytest.approx(100 * 4 / 6)
    assert scores["perplexity"] == pytest.approx(torch.tensor(7.0 / 6).exp().item())
    assert scores["loss"] == pytest.approx(7 / 6) and scores["tokens"] == 6
    json.dumps(scores)


@pytest.mark.parametrize("options, key", [
    ({"mlm_probability": 0.0}, "mlm_probability"),
    ({"mlm_probability": 1.5}, "mlm_probability"),
    ({"mask_replace_prob": 0.9, "random_replace_prob": 0.2}, "random_replace_prob"),
    ({"random_replace_prob": -0.1}, "random_replace_prob"),
    ({"documents": "paragraph"}, "documents"),
    ({"top_k": 0}, "top_k"),
])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        MaskedLmTask(options=options)


def test_input_without_a_mask_token_is_a_clear_error(tokenizer):
    task, _, _ = make_task(tokenizer)
    with pytest.raises(DataError, match=r"no \[MASK\]"):
        task.parse_input("the river runs past old mills")
    assert task.parse_input({"text": "the [MASK] runs"})["text"] == "the [MASK] runs"
    with pytest.raises(DataError, match="beyond max_length"):
        task.encode([task.parse_input("river " * 300 + "[MASK]")])


def test_reading_documents_lines_paragraphs_jsonl_and_hub_rows(tmp_path):
    (tmp_path / "para.txt").write_text("first line\nof one document\n\nsecond document\n")
    (tmp_path / "docs.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    task = MaskedLmTask()
    assert [d["text"] for d in task.read(str(tmp_path / "para.txt"))] == ["first line\nof one document",
                                                                          "second document"]
    lines = MaskedLmTask(options={"documents": "line"}).read(str(tmp_path / "para.txt"))
    assert len(lines) == 3 and list(task.texts(lines))[0] == "first line"
    assert list(task.texts(task.read(str(tmp_path / "docs.jsonl")))) == ["one", "two"]
    import datasets

    rows = datasets.Dataset.from_dict({"body": ["alpha beta", "", "gamma"]})
    corpus = MaskedLmTask(options={"text_field": "body"}).read_hub(rows, "hub:x:train")
    assert list(corpus.texts()) == ["alpha beta", "gamma"]
    with pytest.raises(DataError, match="no text field 'text'"):
        task.read_hub(rows, "hub:x:train")


# ---- training, saving, reloading -------------------------------------------------------------------
def test_the_plugin_contract(corpus_files):
    from nlpkit.testing import check_task

    report = check_task(MaskedLmTask, **corpus_files, options={"max_length": 32},
                        backbone={"spec": "mini", "vocab_size": 300}, raw_input="the river [MASK] past old mills")
    assert report.passed, report.summary()
    assert "identical after reload" in report["reload"].detail


def test_train_save_reload_predict_on_a_from_scratch_preset(corpus_files, tmp_path):
    out = tmp_path / "run"
    result = nlpkit.train({
        "tasks": [{"type": "masked-lm", "data": corpus_files, "options": {"max_length": 32}}],
        "backbone": {"spec": "mini", "vocab_size": 300},
        "trainer": {"max_steps": 6, "eval_every": 6, "batch_size": 8, "lr": 3e-3},
        "logging": {"progress": False, "tensorboard": False, "plots": False},
        "output_dir": str(out)})
    recorded = result.metrics["tasks"]["masked-lm"]
    assert recorded["tokens"] > 0 and 1 < recorded["perplexity"] < 300 and 0 <= recorded["accuracy"] <= 100
    pipe = nlpkit.load(out, device="cpu")
    again = pipe.evaluate(corpus_files["dev"])
    assert again == pytest.approx(recorded)  # deterministic dev masks: the reload scores what training did
    text = "the river [MASK] past old [MASK]"
    first = pipe.predict(text)
    assert first == pipe.predict([text, "boats [MASK] slowly"])[0]
    assert [len(m) for m in first["masks"]] == [5, 5]
    assert all(o["token"] not in ("[PAD]", "[CLS]", "[SEP]", "[MASK]") for m in first["masks"] for o in m)
    probabilities = [o["probability"] for o in first["masks"][0]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    shown = pipe.format(first)
    assert shown.splitlines()[0] == first["filled"] and "[MASK]" not in first["filled"]
    assert "[MASK] 2:" in shown


@pytest.mark.parametrize("with_mlm_head", [True, False])
def test_continued_pretraining_of_a_pretrained_bert_folder(tmp_path, corpus_files, with_mlm_head):
    """A small random BERT saved as a transformers folder (WordPiece, with or without cls.predictions.*)."""
    from safetensors import safe_open
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    words = sorted(set(WORDS))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars] + words[:12]
    folder = tmp_path / "bert"
    BertTokenizerFast(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))}).save_pretrained(folder)
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    (BertForMaskedLM if with_mlm_head else BertModel)(config).save_pretrained(folder)

    backbone = Backbone.from_pretrained(str(folder))
    task = MaskedLmTask(options={"max_length": 32, "whole_word_mask": True})
    task.setup(backbone)
    head = task.build_head(backbone)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        if with_mlm_head:
            assert torch.equal(head.dense.weight, f.get_tensor("cls.predictions.transform.dense.weight"))
            assert torch.equal(head.bias, f.get_tensor("cls.predictions.bias"))
        else:
            assert not any(k.startswith("cls.") for k in keys) and head.bias.abs().sum() == 0

    out = tmp_path / "run"
    result = nlpkit.train({
        "tasks": [{"type": "masked-lm", "data": corpus_files, "options": {"max_length": 32, "whole_word_mask": True}}],
        "backbone": {"spec": str(folder)},
        "trainer": {"max_steps": 3, "eval_every": 3, "batch_size": 8},
        "logging": {"progress": False, "tensorboard": False, "plots": False},
        "output_dir": str(out)})
    assert result.metrics["steps"] == 3 and result.metrics["tasks"]["masked-lm"]["tokens"] > 0
    pipe = nlpkit.load(out, device="cpu")
    assert pipe.evaluate(corpus_files["dev"]) == pytest.approx(result.metrics["tasks"]["masked-lm"])
    prediction = pipe.predict("the river [MASK] past old mills")
    assert len(prediction["masks"]) == 1 and len(prediction["masks"][0]) == 5
    assert Path(out / "best" / "model.safetensors").is_file()


def test_resume_mid_run_masks_exactly_as_the_uninterrupted_run(corpus_files, tmp_path):
    """Masks come from torch's generator, which checkpoints restore: resuming the step-3 checkpoint of a
    6-step run ends with exactly its weights and scores."""
    from safetensors.torch import load_file

    def run(out: Path, steps: int, resume: str = "never") -> dict:
        return nlpkit.train({
            "tasks": [{"type": "masked-lm", "data": corpus_files, "options": {"max_length": 32}}],
            "backbone": {"spec": "mini", "vocab_size": 300},
            "trainer": {"max_steps": steps, "eval_every": 3, "batch_size": 8, "lr": 3e-3},
            "checkpoint": {"keep_last": 2, "resume": resume, "save_minutes": None},
            "logging": {"progress": False, "tensorboard": False, "plots": False},
            "output_dir": str(out)}).metrics

    whole = run(tmp_path / "whole", 6)  # keeps its step-3 checkpoint (keep_last 2)
    resumed = run(tmp_path / "resumed", 6, resume=str(tmp_path / "whole" / "checkpoints" / "step-3"))
    assert resumed["resumed_from"] == [3] and resumed["tasks"] == whole["tasks"]
    a = load_file(tmp_path / "whole" / "checkpoints" / "step-6" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "step-6" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the three uses: pretrain, then fine-tune from the run; and as an auxiliary task -----------------
def _ner_files(folder, lines):
    """A NER file whose sentences are the corpus's: two tags, so a few steps can learn something."""
    rows = []
    for line in lines:
        rows += [f"{w} {'B-X' if w[0].isupper() or w in ('river', 'mills') else 'O'}" for w in line.split()] + [""]
    path = folder / "ner.conll"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_a_pretraining_run_is_the_backbone_of_a_fine_tuning_run(corpus_files, tmp_path):
    trainer, quiet = {"batch_size": 8, "lr": 3e-3}, {"progress": False, "tensorboard": False, "plots": False}
    pre = nlpkit.train({"tasks": [{"type": "masked-lm", "data": corpus_files, "options": {"max_length": 32}}],
                        "backbone": {"spec": "mini", "vocab_size": 300}, "trainer": {**trainer, "max_steps": 4},
                        "logging": quiet, "output_dir": str(tmp_path / "pre")})
    ner = _ner_files(tmp_path, Path(corpus_files["train"]).read_text().splitlines()[:40])
    config = {"tasks": [{"type": "ner", "data": {"train": ner, "dev": ner}}],
              "backbone": {"spec": str(pre.output_dir)}, "trainer": {**trainer, "max_steps": 1, "lr": 1e-9},
              "logging": quiet, "output_dir": str(tmp_path / "ner")}
    nlpkit.train(config)
    pretrained, tuned = nlpkit.load(pre.output_dir), nlpkit.load(tmp_path / "ner")
    # its tokenizer came along (no new one was trained on the NER text) ...
    assert tuned.model.backbone.tokenizer.get_vocab() == pretrained.model.backbone.tokenizer.get_vocab()
    assert not (tmp_path / "ner" / "tokenizer-scratch").exists()
    # ... and its weights: one step at lr 1e-9 leaves the backbone where pretraining left it
    before = pretrained.model.backbone.state_dict()
    after = tuned.model.backbone.state_dict()
    assert set(before) == set(after)
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert list(tuned.model.heads) == ["ner"]  # the pretraining head stays behind


def test_masked_lm_as_an_auxiliary_task(corpus_files, tmp_path):
    ner = _ner_files(tmp_path, Path(corpus_files["train"]).read_text().splitlines()[:40])
    result = nlpkit.train({
        "tasks": [{"type": "ner", "data": {"train": ner, "dev": ner}},
                  {"type": "masked-lm", "data": corpus_files, "options": {"max_length": 32}}],
        "backbone": {"spec": "mini", "vocab_size": 300},
        "trainer": {"max_steps": 6, "eval_every": 6, "batch_size": 8},
        "logging": {"progress": False, "tensorboard": False, "plots": False},
        "output_dir": str(tmp_path / "both")})
    assert set(result.metrics["tasks"]) == {"ner", "masked-lm"}
    assert {"f1", "perplexity"} <= set(result.metrics["tasks"]["ner"]) | set(result.metrics["tasks"]["masked-lm"])
    pipe = nlpkit.load(result.output_dir)
    assert pipe.predict("the river ran past old mills", task="ner") is not None
