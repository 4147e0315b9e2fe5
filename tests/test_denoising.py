"""The denoising plugin (BART text infilling): the noise itself (exact mask ratio, one mask per span,
specials untouched, sentence permutation), fixed evaluation noise and RNG-driven training noise, and
short runs on the from-scratch mini preset (built decoder) and on a tiny random BART (its own decoder)
that save, reload and score the same."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import nlpkit
from nlpkit.apps.cli import main as cli
from nlpkit.sdk.errors import BackboneError, ConfigError
from nlpkit_tasks.denoising import (DenoisingTask, TextInfilling, apply_spans, eval_rng, find_mask_token,
                                    permute_sentences, plan_spans, sentence_end_ids)

EMBEDDED = Path(__file__).resolve().parents[1] / "tasks" / "data" / "pretraining"
MASK = 4
SPECIAL = np.array([0, 1, 2, 3, MASK])  # pad, unk, cls, sep, mask in the synthetic blocks below


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_own_cache(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:  # token caches go to a temporary folder, not ~/.cache
        mp.setenv("NLPKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("text")
    train = EMBEDDED.joinpath("train.txt").read_text(encoding="utf-8").splitlines()[:120]
    dev = EMBEDDED.joinpath("dev.txt").read_text(encoding="utf-8").splitlines()[:12]
    (tmp / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (tmp / "dev.txt").write_text("\n".join(dev) + "\n", encoding="utf-8")
    return {"train": str(tmp / "train.txt"), "dev": str(tmp / "dev.txt")}


def block(n: int, *more: int) -> np.ndarray:
    """[CLS] n distinct tokens [SEP] (then more runs, each followed by [SEP])."""
    ids, nxt = [2], 10
    for size in (n, *more):
        ids += list(range(nxt, nxt + size)) + [3]
        nxt += size
    return np.array(ids)


# ---- the noise -------------------------------------------------------------------------------------
def test_spans_cover_exactly_the_mask_ratio_and_never_overlap():
    rng = np.random.default_rng(0)
    lengths_seen = []
    for n in (1, 7, 50, 126):
        for _ in range(300):
            starts, lengths = plan_spans(n, 0.3, 3.0, rng)
            cover = np.zeros(n + 1, dtype=int)
            for s, k in zip(starts, lengths):
                cover[s:s + k] += 1
            assert cover.max() <= 1, "spans overlap"
            assert cover[:n].sum() == math.ceil(0.3 * n) and cover[n] == 0
            assert ((0 <= starts) & (starts <= n)).all()
            lengths_seen += lengths.tolist()
    lengths_seen = np.array(lengths_seen)
    assert 2.5 < lengths_seen.mean() < 3.1  # Poisson(3), the last span of each block cut to the budget
    assert 0.02 < (lengths_seen == 0).mean() < 0.09  # P(0) = e^-3 = 5%: mask insertions
    assert plan_spans(10, 0.0, 3.0, rng)[0].size == 0


def test_each_span_becomes_one_mask():
    ids = np.array([2, 10, 11, 12, 3, 13, 14, 15, 16, 3])
    positions = np.array([1, 2, 3, 5, 6, 7, 8])  # the maskable ones
    # (0, 2): "10 11"; (2, 2): "12 | 13", across [SEP] (a mask on each side); zero-length spans at 6 and 7
    # insert a mask before "16" and after it
    got = apply_spans(ids, positions, np.array([0, 2, 6, 7]), np.array([2, 2, 0, 0]), MASK)
    assert got.tolist() == [2, MASK, MASK, 3, MASK, 14, 15, MASK, 16, MASK, 3]


def test_noise_masks_the_ratio_keeps_special_tokens_and_collapses_spans():
    noise = TextInfilling(MASK, SPECIAL, mask_ratio=0.3, poisson_lambda=3.0)
    ids = block(60)
    for seed in range(200):
        out = noise(ids, np.random.default_rng(seed))
        kept = out[out >= 10]
        assert (np.diff(kept) > 0).all(), "kept tokens stay in order"
        assert 60 - len(kept) == 18  # exactly ceil(0.3 * 60) tokens hidden
        assert out[0] == 2 and out[-1] == 3 and not np.isin(out[1:-1], [2, 3]).any()
        _, lengths = plan_spans(60, 0.3, 3.0, np.random.default_rng(seed))  # the same draws
        assert (out == MASK).sum() == len(lengths), "one mask per span (a 0-length span inserts one)"
    # a block of two documents: the separator between them is never masked nor moved
    ids = block(20, 25)
    for seed in range(50):
        out = noise(ids, np.random.default_rng(seed))
        assert out[np.isin(out, [2, 3])].tolist() == [2, 3, 3]
        assert (out[:np.flatnonzero(out == 3)[0]] < 35).all()  # nothing of document 2 moved before it


def test_sentence_permutation_moves_whole_sentences_within_a_document():
    end = 9
    ids = np.array([2, 10, 11, end, 12, end, 13, 14, end, 3, 15, end, 16, end, 3])
    maskable = ~np.isin(ids, SPECIAL)

    def sentences(run):
        return [tuple(s) for s in np.split(run, np.flatnonzero(run == end) + 1) if len(s)]

    orders = set()
    for seed in range(30):
        out = permute_sentences(ids, maskable, np.array([end]), 1.0, np.random.default_rng(seed))
        assert out[0] == 2 and out[9] == 3 and out[14] == 3  # specials stay where they were
        assert sorted(sentences(out[1:9])) == sorted(sentences(ids[1:9]))  # whole sentences, same document
        assert sorted(sentences(out[10:14])) == sorted(sentences(ids[10:14]))
        orders.add(tuple(sentences(out[1:9])))
    assert len(orders) == 6  # all 3! orders of the first document's sentences occur
    assert permute_sentences(ids, maskable, np.array([end]), 0.0, np.random.default_rng(0)).tolist() == ids.tolist()


# ---- a short run on the from-scratch mini preset (encoder + built decoder) ---------------------------
@pytest.fixture(scope="module")
def mini_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "run"
    config = {"tasks": [{"type": "denoising", "data": data,
                         "options": {"max_length": 48, "decoder_layers": 1, "max_new_tokens": 12}}],
              "backbone": {"spec": "mini", "vocab_size": 400},
              "trainer": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "eval_every": 30},
              "logging": {"log_every": 5, "progress": False, "plots": False},
              "output_dir": str(out)}
    return nlpkit.train(config)


def test_mini_preset_learns_saves_and_reloads_to_the_same_scores(mini_run, data, capsys):
    scores = mini_run.metrics["tasks"]["denoising"]
    assert set(scores) >= {"accuracy", "perplexity", "loss", "tokens"} and scores["tokens"] > 0
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))
    log = [json.loads(x) for x in (mini_run.output_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss/denoising"] for r in log if "loss/denoising" in r]
    assert losses[-1] < 0.8 * losses[0], losses
    pipe = nlpkit.load(mini_run.output_dir)
    assert pipe.model.heads["denoising"].seq2seq.decoder is not None  # the built decoder
    again = pipe.evaluate(data["dev"])
    assert again == pytest.approx(scores)  # the same fixed evaluation noise after reload
    filled = pipe.predict("The Eagles played the [MASK] in Dunholt on Sunday.")
    assert isinstance(filled["text"], str) and filled["tokens"] <= 12
    capsys.readouterr()
    assert cli(["predict", str(mini_run.output_dir), "The <mask> scored 2 goals."]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_eval_noise_is_fixed_per_block_and_training_noise_follows_torch_rng(mini_run, data):
    pipe = nlpkit.load(mini_run.output_dir)
    task, head = pipe.task(), pipe.model.heads["denoising"]
    blocks = task.encode(task.read(data["train"]))
    batch = task.collate([blocks[i] for i in range(6)])
    mask_id = task.strategy.noise.mask_id
    head.eval()
    first, second = head.corrupt(batch), head.corrupt(batch)
    assert torch.equal(first["input_ids"], second["input_ids"])
    row = blocks[3]["input_ids"]
    expected = task.strategy.noise(row, eval_rng(blocks[3]["block_index"]))
    assert first["input_ids"][3, : len(expected)].tolist() == expected.tolist()
    assert (first["input_ids"] == mask_id).any()
    # labels: the original block without its frame, then [EOS] (the built decoder's target convention)
    eos = task.tokenizer.eos_token_id
    assert first["labels"][3, : len(row) - 1].tolist() == row[1:-1].tolist() + [eos]
    head.train()
    torch.manual_seed(1)
    a = head.corrupt(batch)["input_ids"]
    b = head.corrupt(batch)["input_ids"]
    torch.manual_seed(1)
    c = head.corrupt(batch)["input_ids"]
    assert torch.equal(a, c) and not torch.equal(a, b)
    # special tokens of the real tokenizer are never masked; sentence ends are found in its vocabulary
    specials = set(task.tokenizer.all_special_ids) - {mask_id}
    for i in range(6):
        src = first["input_ids"][i][first["attention_mask"][i].bool()].tolist()
        original = [t for t in blocks[i]["input_ids"].tolist() if t in specials]
        assert [t for t in src if t in specials] == original
    ends = set(sentence_end_ids(task.tokenizer).tolist())
    assert task.tokenizer("The game ended.", add_special_tokens=False)["input_ids"][-1] in ends
    assert not ends & set(task.tokenizer("The game", add_special_tokens=False)["input_ids"])


def test_resume_mid_corpus_corrupts_exactly_as_the_uninterrupted_run(data, tmp_path):
    """The training noise comes from torch's global RNG, which a checkpoint saves: resuming from step 3
    gives the weights of the uninterrupted run at step 6, bit for bit."""
    import shutil

    from safetensors.torch import load_file

    from nlpkit.engine import checkpoint

    config = {"tasks": [{"type": "denoising", "data": data, "options": {"max_length": 48, "decoder_layers": 1}}],
              "backbone": {"spec": "mini", "vocab_size": 400},
              "trainer": {"max_steps": 6, "batch_size": 8, "eval_every": 6},
              "checkpoint": {"save_every": 3, "keep_last": 2},
              "logging": {"progress": False, "plots": False},
              "output_dir": str(tmp_path / "whole")}
    nlpkit.train(config)
    whole = tmp_path / "whole"
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)  # as if the run had died after its step-3 checkpoint
    for name in ("checkpoints/step-6", "best"):
        shutil.rmtree(cut / name)
    (cut / "metrics.json").unlink()
    assert cli(["train", "--resume", str(cut), "--no-progress"]) == 0
    a = load_file(str(checkpoint.latest_training(whole) / checkpoint.WEIGHTS_FILE))
    b = load_file(str(checkpoint.latest_training(cut) / checkpoint.WEIGHTS_FILE))
    assert checkpoint.step_of(checkpoint.latest_training(cut)) == 6
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_documents_are_scored_by_the_sums_of_their_blocks():
    task = DenoisingTask()
    features = [{"example_index": 0}, {"example_index": 2}, {"example_index": 0}]
    outputs = [{"nll": 2.0, "tokens": 4, "correct": 1}, {"nll": 1.0, "tokens": 2, "correct": 2},
               {"nll": 3.0, "tokens": 4, "correct": 3}]
    preds = task.decode([{"text": "a"}, {"text": "b"}, {"text": "c"}], features, outputs)
    assert preds == [{"nll": 5.0, "tokens": 8, "correct": 4}, {"nll": 0.0, "tokens": 0, "correct": 0},
                     {"nll": 1.0, "tokens": 2, "correct": 2}]
    scores = task.score(preds, [{}] * 3)
    assert scores["accuracy"] == pytest.approx(60.0) and scores["loss"] == pytest.approx(0.6)
    assert scores["perplexity"] == pytest.approx(math.exp(0.6)) and scores["tokens"] == 10
    assert task.score([{"nll": 0.0, "tokens": 0, "correct": 0}], [{}])["accuracy"] == 0.0


def test_the_plugin_contract(data):
    from nlpkit.testing import check_task

    report = check_task(DenoisingTask, train=data["train"], dev=data["dev"],
                        options={"max_length": 48, "decoder_layers": 1, "max_new_tokens": 6})
    assert report.passed


# ---- a tiny random BART: the backbone's own decoder ------------------------------------------------
def make_bart(folder: Path, texts: list[str]) -> None:
    """A BART architecture with random weights and a byte-level BPE tokenizer trained here (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    fast.save_pretrained(folder)
    config = BartConfig(vocab_size=len(fast), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=160, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, forced_bos_token_id=0)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(folder)


def test_bart_trains_through_its_own_decoder_and_reloads(data, tmp_path):
    make_bart(tmp_path / "bart", Path(data["train"]).read_text(encoding="utf-8").splitlines())
    config = {"tasks": [{"type": "denoising", "data": data, "options": {"max_length": 48, "max_new_tokens": 8}}],
              "backbone": {"spec": str(tmp_path / "bart")},
              "trainer": {"max_steps": 4, "batch_size": 8},
              "logging": {"progress": False, "plots": False},
              "output_dir": str(tmp_path / "run")}
    result = nlpkit.train(config)
    scores = result.metrics["tasks"]["denoising"]
    pipe = nlpkit.load(result.output_dir)
    task, head = pipe.task(), pipe.model.heads["denoising"]
    assert pipe.model.backbone.kind == "encoder-decoder" and head.seq2seq.decoder is None
    assert task.strategy.mask_token == "<mask>" and task.strategy.frame == ((0,), (2,))
    assert pipe.evaluate(data["dev"]) == pytest.approx(scores)
    # labels are the tokenizer's own target format, <s> x </s>: the clean framed block
    blocks = task.encode(task.read(data["dev"]))
    batch = task.collate([blocks[0], blocks[1]])
    head.eval()
    noisy = head.corrupt(batch)
    assert noisy["labels"][0, : len(blocks[0]["input_ids"])].tolist() == blocks[0]["input_ids"].tolist()
    assert (noisy["input_ids"] == task.strategy.noise.mask_id).any()
    # predict: [MASK] is read as this tokenizer's <mask>
    feature = task.encode([task.parse_input("The Owls [MASK] the Ravens.")])[0]
    assert task.strategy.noise.mask_id in feature["input_ids"]
    assert isinstance(pipe.predict("The Owls <mask> the Ravens.")["text"], str)


def test_a_bart_denoising_run_is_a_backbone(data, tmp_path):
    """--backbone RUN on a tied encoder-decoder: safetensors keeps one name of the tied embeddings, and
    loading must not call the others missing (it did: 'missing model.model.shared.weight')."""
    make_bart(tmp_path / "bart", Path(data["train"]).read_text(encoding="utf-8").splitlines())
    trainer, quiet = {"max_steps": 2, "batch_size": 8}, {"progress": False, "plots": False}
    first = nlpkit.train({"tasks": [{"type": "denoising", "data": data, "options": {"max_length": 48}}],
                          "backbone": {"spec": str(tmp_path / "bart")}, "trainer": trainer, "logging": quiet,
                          "output_dir": str(tmp_path / "pre")})
    again = nlpkit.train({"tasks": [{"type": "denoising", "name": "more", "data": data, "options": {"max_length": 48}}],
                          "backbone": {"spec": str(first.output_dir)}, "trainer": {**trainer, "max_steps": 1},
                          "logging": quiet, "output_dir": str(tmp_path / "next")})
    pre, nxt = nlpkit.load(first.output_dir).model.backbone, nlpkit.load(again.output_dir).model.backbone
    assert nxt.model.get_input_embeddings().weight.data_ptr() == nxt.model.get_output_embeddings().weight.data_ptr()
    assert pre.model.config.d_model == nxt.model.config.d_model


def test_t5_without_a_mask_token_gets_the_one_the_option_names(data, tmp_path):
    from test_generation import make_t5

    make_t5(tmp_path / "t5", Path(data["train"]).read_text(encoding="utf-8").splitlines())
    config = {"tasks": [{"type": "denoising", "data": data, "options": {"max_length": 48}}],
              "backbone": {"spec": str(tmp_path / "t5")},
              "trainer": {"max_steps": 2, "batch_size": 8},
              "logging": {"progress": False, "plots": False},
              "output_dir": str(tmp_path / "run")}
    with pytest.raises(BackboneError, match="set the option mask_token"):
        nlpkit.train(config)
    config["tasks"][0]["options"]["mask_token"] = "<mask>"
    config["output_dir"] = str(tmp_path / "run2")
    result = nlpkit.train(config)
    pipe = nlpkit.load(result.output_dir)
    task = pipe.task()
    assert task.strategy.frame == ((), (1,)) and task.tokenizer.convert_tokens_to_ids("<mask>") == task.strategy.noise.mask_id
    assert pipe.model.backbone.model.get_input_embeddings().weight.shape[0] == len(task.tokenizer)
    assert pipe.evaluate(data["dev"]) == pytest.approx(result.metrics["tasks"]["denoising"])


# ---- mask tokens and options -----------------------------------------------------------------------
def _word_tokenizer(specials: dict[str, str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<extra_id_0>": 3, "a": 4, "<mask>": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   **specials)


def test_mask_token_the_tokenizers_own_t5s_sentinel_or_the_option():
    assert find_mask_token(_word_tokenizer({"mask_token": "<mask>"}), None) == ("<mask>", 5)
    t5_like = _word_tokenizer({"extra_special_tokens": ["<extra_id_0>"]})
    assert find_mask_token(t5_like, None) == ("<extra_id_0>", 3)
    assert find_mask_token(t5_like, "<mask>") == ("<mask>", 5)
    with pytest.raises(BackboneError, match="not in the tokenizer's vocabulary"):
        find_mask_token(t5_like, "[MASK]")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    bare = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    with pytest.raises(BackboneError, match="set the option mask_token"):
        find_mask_token(bare, None)
    assert DenoisingTask(options={"mask_token": "<mask>"}).special_tokens() == ["<mask>"]
    assert DenoisingTask().special_tokens() == []


@pytest.mark.parametrize("options, key", [({"mask_ratio": 1.5}, "mask_ratio"),
                                          ({"poisson_lambda": 0}, "poisson_lambda"),
                                          ({"permute_sentences": -0.1}, "permute_sentences"),
                                          ({"documents": "paragraph"}, "documents")])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        DenoisingTask(options=options)
