"""The benchmark scripts' own claims: the exported HF model computes what the nlpkit checkpoint computes,
the HF pipeline then finds the same entities, and the comparison catches a difference."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common as C  # noqa: E402
import predict_throughput  # noqa: E402

NER_TRAIN = ROOT / "tasks" / "data" / "ner" / "train.conll"


def _wordpiece_bert(folder: Path, texts: list[str]) -> Path:
    """A tiny BERT folder with a WordPiece tokenizer built from the data (self-contained, offline)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w.lower() for t in texts for w in t.split()})
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars] + words[:300]
    vocab = list(dict.fromkeys(vocab))
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import nlpkit

    tmp = tmp_path_factory.mktemp("bench")
    blocks = NER_TRAIN.read_text().split("\n\n")[:80]
    (tmp / "train.conll").write_text("\n\n".join(blocks) + "\n")
    texts = [" ".join(line.split()[0] for line in b.splitlines() if line.strip()) for b in blocks]
    backbone = _wordpiece_bert(tmp / "bert", texts)
    result = nlpkit.train({"tasks": [{"type": "ner", "data": {"train": str(tmp / "train.conll")}}],
                           # dropout off and 8 steps: the model must tag some entities for the comparisons below,
                           # and 3 steps with dropout left that to the luck of the dropout draws
                           "backbone": {"spec": str(backbone), "dropout": 0.0},
                           "trainer": {"max_steps": 8, "batch_size": 8, "lr": 1e-2},
                           "logging": {"progress": False},
                           "output_dir": str(tmp / "run")})
    sentences = [w for w, _ in C.read_conll_sentences(tmp / "train.conll")]
    return result.output_dir / "best", tmp, sentences


def test_export_reproduces_the_checkpoints_logits(trained):
    from transformers import AutoModelForTokenClassification

    import nlpkit

    best, tmp, sentences = trained
    out = C.export_token_classification(best, tmp / "hf")
    hf = AutoModelForTokenClassification.from_pretrained(out).eval()
    nlp = nlpkit.load(best, device="cpu")
    task = nlp.tasks[0]
    assert hf.config.id2label == dict(enumerate(task.labels))
    batch = task.collate(task.encode([{"tokens": s} for s in sentences[:6]]))
    with torch.inference_mode():
        ours = nlp.model("ner", batch)["logits"]
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_export_refuses_a_checkpoint_whose_weights_do_not_fit(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    best, _, _ = trained
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(best, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["heads.ner.classifier.weight"]
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(KeyError, match="classifier.weight"):
        C.export_token_classification(broken, tmp_path / "hf")


def test_pipeline_and_nlpkit_find_the_same_entities(trained):
    """The predict benchmark's equality claim, on a model whose labels are not all "O"."""
    from transformers import AutoTokenizer, pipeline

    import nlpkit

    best, tmp, sentences = trained
    out = C.export_token_classification(best, tmp / "hf-pipe")
    tokenizer = AutoTokenizer.from_pretrained(out)
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    words = [[p for w in s for p, _ in pre.pre_tokenize_str(w)] for s in sentences[:30]]
    ours = nlpkit.load(best, device="cpu").predict([{"tokens": w} for w in words], batch_size=8)
    hf = pipeline("token-classification", model=str(out), tokenizer=str(out), aggregation_strategy="first", device=-1)
    theirs = hf(words, batch_size=5, is_split_into_words=True)
    a, b = predict_throughput.nlpkit_entities(ours), predict_throughput.hf_entities(theirs)
    assert sum(len(x) for x in a) > 0, "the tiny model predicts no entity: the comparison would be vacuous"
    result = predict_throughput.compare(a, b, words, tol=1e-3)
    assert result["identical"] == len(words), result["differences"]
    assert result["scores_within_tolerance"]


def test_compare_reports_a_changed_span():
    words = [["Anna", "went", "to", "Rome"]]
    a = [[("PER", 0, 4, 0.9), ("LOC", 13, 17, 0.8)]]
    b = [[("PER", 0, 4, 0.9), ("LOC", 10, 17, 0.8)]]
    result = predict_throughput.compare(a, b, words, tol=1e-3)
    assert result["identical"] == 0
    assert result["differences"][0]["hf"][1] == ("LOC", 10, 17, "to Rome")


def test_conll_slices_take_the_first_sentences(tmp_path, monkeypatch):
    import gzip

    monkeypatch.setattr(C, "CACHE", tmp_path / "cache")
    data = tmp_path / "root" / "conll2003"
    data.mkdir(parents=True)
    text = "-DOCSTART- -X- -X- O\n\n" + "".join(f"w{i} NN B-NP {'B-PER' if i % 2 else 'O'}\n\n" for i in range(5))
    for name in ("train.txt.gz", "valid.txt.gz"):
        with gzip.open(data / name, "wt") as f:
            f.write(text)
    files = C.conll_slices(tmp_path / "root", 3, 2)
    assert C.read_conll_sentences(files["train"]) == [(["w0"], ["O"]), (["w1"], ["B-PER"]), (["w2"], ["O"])]
    assert len(C.read_conll_sentences(files["dev"])) == 2


def test_optimizer_is_fused_adamw_with_decay_groups():
    from nlpkit.engine.optim import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(model, 1e-3, 0.01)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert len(opt.param_groups[0]["params"]) == 1  # only the Linear weight decays
    model(torch.randn(2, 4)).sum().backward()
    opt.step()  # the fused kernel runs on this device


def test_markdown_table_aligns_columns():
    table = C.markdown_table(["a", "bb"], [["x", 1.25], ["yy", "z"]]).splitlines()
    assert table[0] == "| a  | bb  |" and table[2] == "| x  | 1.2 |"
    assert len({len(line) for line in table}) == 1


def test_backbones_run_scaled_dot_product_attention(trained):
    """Fresh, pretrained-folder and reloaded backbones all use PyTorch's SDPA kernel."""
    from nlpkit.engine import build
    from nlpkit.engine.backbone import Backbone

    best, tmp, _ = trained
    assert Backbone.from_pretrained(str(tmp / "bert")).model.config._attn_implementation == "sdpa"
    model, _, _ = build.load(best)
    assert model.backbone.model.config._attn_implementation == "sdpa"


def test_step_meter_counts_steps_two_to_n_and_padding():
    """The meter both sides share: the first step (one-off costs) is outside the window, real tokens come
    from the attention mask, and padding is what the model computed beyond them."""
    meter = C.StepMeter(total_steps=3)
    full = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    half = {"input_ids": torch.zeros(4, 6, dtype=torch.long),
            "attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0]] * 4)}
    for batch in (full, half, half):
        meter.count(batch)
        meter.step_done()
    r = meter.result()
    assert r["window_steps"] == 2 and r["window_samples"] == 8 and r["window_tokens"] == 24
    assert r["padding_fraction"] == pytest.approx(0.5)
    assert r["samples_per_s"] == pytest.approx(8 / r["window_wall_s"])
    assert C.StepMeter(1).result() == {}


# ---- the scripts themselves, end to end in --quick mode -------------------------------------------------
@pytest.fixture(scope="module")
def quick_env(tmp_path_factory):
    """A data root in the shared benchmarks' layout, made from the bundled NER data, and a private cache
    (slices are cached by size, so a shared cache would mix this data with the real CoNLL slices)."""
    import gzip
    import os

    tmp = tmp_path_factory.mktemp("quick")
    conll = tmp / "data" / "conll2003"
    conll.mkdir(parents=True)
    for source, target in (("train.conll", "train.txt.gz"), ("dev.conll", "valid.txt.gz")):
        (conll / target).write_bytes(gzip.compress((NER_TRAIN.parent / source).read_bytes()))
    env = {**os.environ, "NLPKIT_BENCH_CACHE": str(tmp / "cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    return tmp, env


def _run_quick(script: str, quick_env, *extra: str) -> tuple[str, dict | list]:
    import json
    import subprocess

    tmp, env = quick_env
    out_json = tmp / f"{script}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--data-root",
                           str(tmp / "data"), "--json", str(out_json), *extra],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "device: no GPU found, running on the CPU" in proc.stdout or "device: cuda" in proc.stdout
    return proc.stdout, json.loads(out_json.read_text())


def test_train_throughput_quick_runs_both_sides_and_prints_ratios(quick_env):
    out, runs = _run_quick("train_throughput.py", quick_env, "--setting", "defaults")
    assert "samples/s ratio" in out and "dev f1 difference (points)" in out
    assert "whole process: nlpkit is" in out and "95% CI" in out
    by_system = runs["variants"]["ner"]["runs"]
    assert sorted(by_system) == ["HF Trainer", "nlpkit"], sorted(by_system)
    nlpkit_run, hf_run = by_system["nlpkit"][0], by_system["HF Trainer"][0]
    for r in (nlpkit_run, hf_run):
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and 0 <= r["padding_fraction"] < 1
        assert r["dev_score"] is not None
    # the same work on both sides: steps and samples in the timed window (real tokens differ by the
    # first batch, which each side draws differently and the window leaves out)
    for key in ("window_steps", "window_samples"):
        assert nlpkit_run[key] == hf_run[key], key
    # the HF recipe samples at random, nlpkit groups by length: it must pad less
    assert nlpkit_run["padding_fraction"] < hf_run["padding_fraction"]


def test_train_throughput_like_for_like_and_time_to_a_score(quick_env):
    """The default setting gives both sides bf16 and length-grouped batches; --eval-every records each side's
    dev curve against the time since launch, and a second invocation reads every run from the cache."""
    out, runs = _run_quick("train_throughput.py", quick_env, "--eval-every", "4")
    spec = runs["variants"]["ner"]["spec"]
    assert spec["precision"] == spec["hf_precision"] == "bf16" and spec["hf_sampling"] == "group_by_length"
    assert spec["nlpkit_group"] is True
    for side in ("nlpkit", "HF Trainer"):
        for run in runs["variants"]["ner"]["runs"][side]:
            curve = run["curve"]
            assert [step for _, step, _ in curve] == list(range(4, spec["steps"] + 1, 4)), curve
            times = [t for t, _, _ in curve]
            assert 0 < times[0] < times[1] <= run["process_wall_s"], (times, run["process_wall_s"])
    assert "time to a score: target" in out and "seconds to target" in out
    again, _ = _run_quick("train_throughput.py", quick_env, "--eval-every", "4")
    assert again.count("(cached)") == 2, again[-2000:]


def test_bootstrap_intervals_cover_the_median_and_narrow_with_agreement():
    lo, hi = C.bootstrap_interval([10.0, 11.0, 12.0, 13.0, 14.0])
    assert 10.0 <= lo < 12.0 < hi <= 14.0
    lo, hi = C.bootstrap_interval([10.0, 11.0, 12.0, 13.0, 50.0])  # one outlier widens it, within the values
    assert 10.0 <= lo <= 12.0 <= hi <= 50.0
    assert C.bootstrap_interval([5.0] * 5) == (5.0, 5.0)
    ratio, lo, hi = C.ratio_interval([20.0, 21.0, 22.0], [10.0, 10.5, 11.0])
    assert abs(ratio - 2.0) < 1e-9 and lo <= 2.0 <= hi and lo > 1.7 and hi < 2.3


def test_predict_throughput_quick_compares_equal_outputs(quick_env):
    out, result = _run_quick("predict_throughput.py", quick_env)
    assert len(result["timings"]["nlpkit"]) == len(result["timings"]["hf"]) == 1
    assert "200/200 sentences with identical entity lists" in out, out[-2000:]
    assert "sentences/s ratio" in out
    # the cheaper variants ran, were timed and were compared with fp32 and scored on gold labels
    assert "nlpkit bf16 / HF pipeline bf16 (like for like)" in out and len(result["timings"]["hf_bf16"]) == 1
    assert 0 <= result["comparison"]["hf_bf16"]["identical"] <= 200
    for name in ("bf16", "int8"):
        assert len(result["timings"][name]) == 1 and f"nlpkit {name} / nlpkit fp32" in out
        agreement = result["comparison"][name]
        assert agreement["sentences"] == 200 and 0 <= agreement["identical"] <= 200 and "f1" in agreement


def test_mfu_quick_reports_a_fraction_of_the_measured_peak(quick_env):
    out, result = _run_quick("mfu.py", quick_env, "--precisions", "fp32")
    assert "MFU" in out and "FLOPs per real token" in out
    run, peak = result["runs"]["fp32"], result["peaks"]["fp32"]["best"]
    assert run["mfu"] == pytest.approx(run["tokens_per_s"] * run["flops_per_token"] / peak)
    assert "the step's matmuls alone" in out
    assert 0 < run["step_matmul_rate"] < 10 * peak  # the step's shapes: measured, of the order of the square peak


def test_eager_attention_computes_what_sdpa_computes(trained):
    """backbone.attention=eager is the reference the SDPA default is measured against: same function."""
    from nlpkit.engine import build

    best, _, _ = trained
    model, _, _ = build.load(best)
    model.eval()
    backbone = model.backbone
    batch = backbone.tokenizer(["Peter lives in Berlin .", "EU rejects German call"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        fused = backbone.model(**batch).last_hidden_state
        backbone.set_attention("eager")
        assert backbone.model.config._attn_implementation == "eager"
        eager = backbone.model(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(eager[mask], fused[mask], atol=1e-5, rtol=1e-4)


def test_backbone_attention_setting_is_checked():
    from nlpkit.engine.config import BackboneConfig
    from nlpkit.sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="backbone.attention"):
        BackboneConfig(spec="tiny", attention="flash").validate("backbone")


def test_serve_load_quick_answers_every_request_and_every_malformed_one_4xx(quick_env):
    out, result = _run_quick("serve_load.py", quick_env)
    assert "result: PASS" in out and "| batching on" in out and "| batching off" in out, out[-3000:]
    on, off = result["results"]["batching on"], result["results"]["batching off"]
    for r in (on, off):
        assert r["finished"] and r["requests"] == 300 and r["errors"] == 0 and r["exit_status"] == 0
        assert r["requests_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert off["max_batch"] == 1 and on["max_batch"] > 1  # 32 clients at once: batches form
    assert on["malformed"]["all_4xx"] and on["malformed"]["answered_4xx"] == 100
    assert on["after_malformed"]["errors"] == 0


def test_pretrain_throughput_quick_runs_masked_lm_against_run_mlm(quick_env):
    """Both sides do the same work in the timed window (full blocks, no padding), and both losses are the
    mean cross-entropy over masked tokens: about ln(vocabulary) for a random model at step 1."""
    import math

    out, result = _run_quick("pretrain_throughput.py", quick_env)
    assert "tokens/s ratio" in out and "train loss (mean of last 1 steps) difference" in out, out[-3000:]
    runs = result["throughput"]["runs"]
    assert sorted(runs) == ["HF Trainer", "nlpkit"], sorted(runs)
    ours, theirs = runs["nlpkit"][0], runs["HF Trainer"][0]
    for key in ("window_steps", "window_samples", "window_tokens"):
        assert ours[key] == theirs[key], key
    spec = result["throughput"]["spec"]
    assert ours["window_tokens"] == (spec["steps"] - 1) * spec["batch_size"] * spec["block_size"]
    from transformers import AutoTokenizer

    vocab = math.log(len(AutoTokenizer.from_pretrained(spec["backbone"])))
    for r in (ours, theirs):
        assert r["tokens_per_s"] > 0 and r["padding_fraction"] == 0
        assert abs(r["first_loss"] - vocab) < 1.0, (r["first_loss"], vocab)
        assert math.isfinite(r["final_loss"])
    assert ours["corpus_tokens"] > 0 and ours["cache_folder"], "nlpkit did not build its token cache"


def test_pretrain_throughput_repeats_whole_lines_to_the_size(tmp_path, monkeypatch):
    import pretrain_throughput

    monkeypatch.setattr(C, "CACHE", tmp_path / "cache")
    source = tmp_path / "text.txt"
    source.write_text("first line\nsecond line without its newline")
    big = pretrain_throughput.repeated_corpus(source, 0.001)  # 1,048 bytes: ~22 copies
    lines = big.read_text().splitlines()
    assert big.stat().st_size >= 0.001 * 2**20 and lines[:3] == ["first line", "second line without its newline",
                                                                "first line"]
    assert set(lines) == {"first line", "second line without its newline"}
    small = pretrain_throughput.repeated_corpus(source, 5 / 2**20)  # smaller than the source: its first line
    assert small.read_text() == "first line\n"
    mtime = big.stat().st_mtime_ns
    assert pretrain_throughput.repeated_corpus(source, 0.001) == big and big.stat().st_mtime_ns == mtime


def test_llm_gemma_quick_runs_every_job_on_a_tiny_llama(quick_env):
    """benchmarks/llm_gemma.py --quick: the same plumbing as the Gemma runs (decoder, LoRA on q/v, the HF
    Trainer + peft side, before/after scores, the memory variants) on a tiny random Llama."""
    import gzip

    tmp, _ = quick_env
    data, bundled = tmp / "data", ROOT / "tasks" / "data"
    (data / "sst2").mkdir(exist_ok=True)
    (data / "sst2" / "train.tsv.gz").write_bytes(gzip.compress((bundled / "sentiment" / "train.tsv").read_bytes()))
    (data / "multi30k").mkdir(exist_ok=True)
    for split, target in (("train", "train"), ("dev", "val")):
        for lang in ("en", "de"):
            source = (bundled / "translation" / f"{split}.{lang}").read_bytes()
            (data / "multi30k" / f"{target}.{lang}.gz").write_bytes(gzip.compress(source))
    out, result = _run_quick("llm_gemma.py", quick_env, "all")
    assert "samples/s ratio" in out and "dev accuracy difference (points)" in out, out[-3000:]
    jobs = result["jobs"]

    sst2 = jobs["sst2"]
    ours, theirs = sst2["runs"]["nlpkit"][0], sst2["runs"]["HF Trainer + peft"][0]
    assert theirs["model_class"] == "LlamaForSequenceClassification" and theirs["missing_keys"] == ["score.weight"]
    for key in ("window_steps", "window_samples"):  # the same work in the timed window
        assert ours[key] == theirs[key] == (sst2["spec"]["steps"] - 1) * (8 if key == "window_samples" else 1), key
    for r in (ours, theirs):
        assert 0 < r["trainable_params"] < 0.1 * r["total_params"]  # adapters + head, not the base
        assert r["train_peak_rss_mb"] > 0 and r["process_peak_rss_mb"] >= r["train_peak_rss_mb"]
        assert 0 <= r["dev_score"] <= 100
    train = {line.split("\t", 1)[1] for line in Path(sst2["spec"]["train"]).read_text().splitlines()[1:]}
    dev = [line.split("\t", 1)[1] for line in Path(sst2["spec"]["dev"]).read_text().splitlines()[1:]]
    assert len(train) == 32 and len(dev) == 16 and not train & set(dev)  # distinct texts, disjoint

    for job, metric in (("conll", "f1"), ("sft", "bleu")):
        scores = {int(k): v for k, v in jobs[job]["run"]["scores"].items()}
        assert sorted(scores) == [0, jobs[job]["spec"]["steps"]], (job, sorted(scores))  # before and after
        assert all(metric in s for s in scores.values()), job

    memory = jobs["memory"]["runs"]
    full, lora, checkpointed = memory["full fine-tuning"], memory["LoRA"], memory["LoRA + gradient checkpointing"]
    assert full["trainable_params"] == full["total_params"]
    assert lora["trainable_params"] == checkpointed["trainable_params"] < full["trainable_params"] / 10
    assert all(r["train_peak_rss_mb"] > 0 for r in memory.values())


def test_llm_gemma_ner_modes_quick_reports_seeds_a_verdict_and_trains_nothing_twice(quick_env):
    """benchmarks/llm_gemma.py ner-modes --quick: the token head and mode: generative per seed on a tiny random Llama,
    scored on a report split apart from the selection split, mean ± sd and the verdict rule in the table and the JSON;
    a second invocation takes every run from the result cache."""
    import statistics

    import _common

    tmp, _ = quick_env
    out, result = _run_quick("llm_gemma.py", quick_env, "ner-modes")
    job = result["jobs"]["ner-modes"]
    assert job["seeds"] == [42, 43] and job["precision"] == "fp32"
    assert "budget, fixed before any run: one epoch of the 64 training sentences" in out, out[-3000:]
    assert "DEPARTURE from the budget: --quick" in out and "precision: fp32, for training and for scoring" in out
    assert "4 runs: 0 from the cache" in out and "4 to train" in out
    runs = {(r["seed"], r["mode"]): r for r in job["runs"]}
    assert sorted(runs) == [(42, "generative"), (42, "token head"), (43, "generative"), (43, "token head")]
    for key, r in runs.items():
        assert not r["from_cache"] and r["steps"] == r["best_step"] == 3, key
        assert 0 <= r["report"]["f1"] <= 100 and 0 <= r["dev_score"] <= 100, key
        assert r["samples_per_s"] > 0 and r["process_wall_s"] > 0 and r["report_wall_s"] >= 0, key
    assert job["modes"]["generative"] == {"mode": "generative", "max_length": 128, "max_new_tokens": 8}
    assert job["modes"]["token head"] == {"max_length": 128} and job["spec"]["eval_batch_size"] == 32

    # the report split: the 16 valid sentences after the 16 of the selection split
    valid = _common.read_conll_sentences(tmp / "data" / "conll2003" / "valid.txt.gz")
    assert _common.read_conll_sentences(Path(job["data"]["select"])) == valid[:16]
    assert _common.read_conll_sentences(Path(job["data"]["report"]["file"])) == valid[16:32]

    # per-seed values, mean ± sd and the verdict: the JSON, the rule and the printed table agree
    rep = job["summary"]["report"]
    head = [runs[(s, "token head")]["report"]["f1"] for s in (42, 43)]
    gen = [runs[(s, "generative")]["report"]["f1"] for s in (42, 43)]
    diffs = [g - h for g, h in zip(gen, head)]
    assert rep["token head"] == head and rep["generative"] == gen and rep["difference"] == pytest.approx(diffs)
    assert rep["difference_mean"] == pytest.approx(statistics.fmean(diffs))
    assert rep["difference_sd"] == pytest.approx(statistics.stdev(diffs))
    m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    expected = "gain" if m - sd > 0 else "loss" if m + sd < 0 else "no difference within the seeds' spread"
    assert job["summary"]["verdict"] == expected
    verdict_line = [line for line in out.splitlines() if line.startswith("verdict: generative - token head")]
    assert len(verdict_line) == 1 and verdict_line[0].endswith(expected.upper()), out[-3000:]
    table = {r["mode"]: r for r in _table(out.split("entity F1, selection split")[0], "mode")}
    assert [_number(table["token head"][f"seed {s}"]) for s in (42, 43)] == pytest.approx(head, abs=0.006)
    assert [_number(table["generative"][f"seed {s}"]) for s in (42, 43)] == pytest.approx(gen, abs=0.006)
    assert table["generative - token head"]["mean ± sd"] == f"{m:+.2f} ± {sd:.2f}"
    assert len(_table(out, "run")) == 4

    again, second = _run_quick("llm_gemma.py", quick_env, "ner-modes")
    assert "4 runs: 4 from the cache" in again and "0 to train" in again, again[-3000:]
    assert again.count("from the cache, measured before with this code and settings") == 4
    second_job = second["jobs"]["ner-modes"]
    assert all(r["from_cache"] for r in second_job["runs"]) and second_job["summary"] == job["summary"]
    assert [r["measured"] for r in _table(again, "run")] == ["cache"] * 4


def test_data_scale_quick_measures_both_sides_twice(quick_env):
    """benchmarks/data_scale.py --quick: both sides, a first run on an empty cache and a second reusing it, each
    with wall, read, encode and start-up seconds and the process tree's peak memory; the table, the targets,
    and the result cache that makes a rerun measure nothing again."""
    import data_scale

    out, result = _run_quick("data_scale.py", quick_env)
    header = "| rows  | side   | run    | n | wall s | read s | encode s | start-up s | peak RSS GB | peak anon GB |"
    assert header in out, out[-3000:]
    assert "second run's start-up <= 25% of the first's at 2,000 rows" in out
    task = result["tasks"]["classification"]
    runs = {(r["side"], r["run"]): r for r in task["runs"]}
    assert sorted(runs) == [("hf", "first"), ("hf", "second"), ("nlpkit", "first"), ("nlpkit", "second")]
    for key, r in runs.items():
        for field in ("wall_s", "read_s", "encode_s", "startup_s", "peak_rss_gb", "peak_anon_gb", "peak_file_gb",
                      "peak_pss_gb"):
            assert isinstance(r[field], (int, float)) and r[field] > 0, (key, field, r[field])
        assert r["startup_s"] < r["wall_s"] and r["peak_anon_gb"] < r["peak_rss_gb"], key
        assert r["steps"] == 2 and r["memory_samples"] > 10, key
    assert runs[("hf", "first")]["map_cache_hit"] is False and runs[("hf", "second")]["map_cache_hit"] is True
    if "cache_dir" in data_scale.nlpkit_data_settings():  # nlpkit's encode cache: the second run reads it
        assert not runs[("nlpkit", "first")]["features_cached"] and runs[("nlpkit", "second")]["features_cached"]
    assert {c["met"] for c in task["checks"]} <= {"yes", "NO", "n/a"} and len(task["checks"]) == 3
    train = Path(runs[("nlpkit", "first")]["log"]).parent.parent / "data" / "bundled-classification-2000.csv"
    assert train.read_text().count("\n") == 2001  # the header and 2,000 rows cycled from the bundled 1,200

    again, _ = _run_quick("data_scale.py", quick_env)  # the same code and settings: nothing is measured again
    assert again.count("measured before with this code and settings") == 2, again[-2000:]


def test_data_scale_memory_meter_sums_the_process_tree():
    """A child holding 200 MB of anonymous memory shows in the tree's peak, with its parent."""
    import subprocess
    import time

    import data_scale

    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(200 * 2**20); time.sleep(1.5)'])")
    proc = subprocess.Popen([sys.executable, "-c", code])
    meter = data_scale.TreeMemory(proc.pid, interval=0.02, pss_interval=0.1)
    meter.start()
    proc.wait()
    time.sleep(0.05)
    peak = meter.stop()
    assert peak["max_processes"] == 2
    assert peak["peak_anon_gb"] > 0.19 and peak["peak_pss_gb"] > 0.19
    assert peak["peak_rss_gb"] >= peak["peak_anon_gb"] + peak["peak_file_gb"] - 0.01


def _table(out: str, first_header_cell: str) -> list[dict[str, str]]:
    """The rows of the last markdown table in ``out`` whose header starts with ``first_header_cell``, as dicts."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|")
              and line.strip("| ").split("|")[0].strip() == first_header_cell]
    assert starts, f"no table headed {first_header_cell!r} in:\n{out[-3000:]}"
    header = [c.strip() for c in lines[starts[-1]].strip().strip("|").split("|")]
    rows = []
    for line in lines[starts[-1] + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")))))
    return rows


def _number(text: str, kind=float):
    """A table cell as a number of the given kind (thousands separators allowed); fails the test otherwise."""
    try:
        return kind(text.replace(",", ""))
    except ValueError:
        pytest.fail(f"{text!r} is not a {kind.__name__}")


def test_result_cache_gives_back_only_what_the_same_code_and_settings_measured(tmp_path):
    cache = C.ResultCache(tmp_path, "code-1")
    assert cache.get({"steps": 4}) is None
    cache.put({"steps": 4}, {"f1": 12.5})
    assert cache.get({"steps": 4}) == {"f1": 12.5}
    assert cache.get({"steps": 5}) is None  # other settings
    assert C.ResultCache(tmp_path, "code-2").get({"steps": 4}) is None  # other code
    assert C.ResultCache(tmp_path, "code-1", fresh=True).get({"steps": 4}) is None  # --fresh
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]  # no temporary file left behind


def test_pretraining_gain_quick_fine_tunes_from_scratch_and_from_its_pretraining_run(quick_env):
    """benchmarks/pretraining_gain.py scratch --quick: a corpus from the bundled data, a masked-LM run of preset mini,
    NER fine-tuned from scratch and from that run; a second invocation trains nothing (the result cache)."""
    out, result = _run_quick("pretraining_gain.py", quick_env, "scratch")
    sources = _table(out, "source (train split only)")
    assert [r["source (train split only)"] for r in sources] == ["ner", "sentiment"]
    assert all(_number(r["documents"], int) > 100 and _number(r["characters"], int) > 1000 for r in sources)
    assert "pretraining: 4 steps" in out and out.count("$ nlpkit train ") == 3, out[-3000:]
    (row,) = _table(out, "task")
    assert row["task"] == "ner" and row["dev metric"] == "f1" and _number(row["steps"], int) == 30
    scratch, pretrained, gain = (_number(row[k]) for k in ("from scratch", "pretrained first", "gain"))
    assert 0 < scratch <= 100 and 0 < pretrained <= 100, "30 steps of NER learned no entity: the runs did not train"
    assert gain == pytest.approx(pretrained - scratch, abs=0.011)  # the gain column is the difference of the two
    walls = [_number(w, int) for w in row["wall s (scratch / pretrained)"].split(" / ")]
    assert len(walls) == 2 and all(w >= 0 for w in walls)
    assert result["rows"][0]["gain"] == pytest.approx(result["rows"][0]["pretrained"] - result["rows"][0]["scratch"])
    assert result["pretraining"]["steps"] == 4 and result["pretraining"]["tokens_per_s"] > 0

    again, _ = _run_quick("pretraining_gain.py", quick_env, "scratch")
    assert again.count("measured before with this code and settings") == 3, again[-3000:]
    assert _table(again, "task") == [row]


def test_left_context_quick_trains_one_mask_of_each_kind(quick_env):
    """benchmarks/left_context.py --quick: preset mini with its bidirectional and its causal mask; the causal one is a
    decoder to nlpkit; the gap line is the difference of the table's F1s; a rerun trains nothing."""
    out, result = _run_quick("left_context.py", quick_env)
    rows = _table(out, "preset")
    assert [(r["preset"], r["seed"], r["attention mask"], r["nlpkit backbone kind"]) for r in rows] == [
        ("mini", "42", "bidirectional", "encoder"), ("mini", "42", "causal", "decoder")]
    f1 = [_number(r["dev F1"]) for r in rows]
    assert all(0 <= x <= 100 for x in f1)
    assert all(1 <= _number(r["best step"], int) <= 40 and _number(r["wall s"], int) >= 0 for r in rows)
    assert all(x > 0 for x in f1), "40 steps on 300 sentences learned no entity: the runs did not train"
    assert f"mini: bidirectional minus causal F1, per seed: {result['gaps']['mini'][0]:+.2f}" in out
    assert result["gaps"]["mini"][0] == pytest.approx(result["rows"][0]["f1"] - result["rows"][1]["f1"])
    assert f1 == pytest.approx([r["f1"] for r in result["rows"]], abs=0.006)

    again, _ = _run_quick("left_context.py", quick_env)
    assert again.count("measured before with this code and settings") == 2 and _table(again, "preset") == rows


def test_sharding_memory_quick_shows_fsdp_holding_half_of_what_ddp_holds(quick_env):
    """benchmarks/sharding_memory.py --quick: DDP and FSDP2 with 2 processes each; every process reports what it
    holds, and FSDP2's shard of the weights, gradients and optimizer state is about half of DDP's."""
    out, result = _run_quick("sharding_memory.py", quick_env)
    rows = _table(out, "engine")
    assert [(r["engine"], r["rank"]) for r in rows] == [("DDP", "0"), ("DDP", "1"), ("FSDP2", "0"), ("FSDP2", "1")]
    figures = ("parameters MB", "gradients MB", "optimizer state MB", "peak RSS MB", "samples/s")
    for r in rows:
        assert all(_number(r[k]) > 0 for k in figures), r
        assert _number(r["wall s"], int) >= 0
    ddp, fsdp = (result["results"][i]["rows"] for i in (0, 1))
    for key in ("param_bytes", "grad_bytes", "optimizer_state_bytes"):
        assert ddp[0][key] == ddp[1][key], key  # DDP: every process holds everything
        assert 0.4 < fsdp[0][key] / ddp[0][key] < 0.6, key  # FSDP2: about half on each of 2
        assert fsdp[0][key] + fsdp[1][key] == pytest.approx(ddp[0][key], rel=0.05), key
    assert "FSDP2 / DDP, rank 0: parameters 0." in out


# ---- multitask_quality.py: SST-2 sentence groups, the verdict, --quick end to end ---------------------------
SST2_ROWS = [
    ("1", "a gorgeous , witty , seductive movie ."),  # 0: sentence A (8 words)
    ("1", "gorgeous , witty"),  # 1: phrase of A
    ("1", "witty , seductive movie"),  # 2: phrase of A
    ("0", "the plot is a mess ."),  # 3: sentence B (6 words)
    ("0", "the plot"),  # 4: in B and in C: goes with C, the longest row holding it
    ("0", "is a mess"),  # 5: phrase of B
    ("1", "the plot thickens nicely , and the movie wins ."),  # 6: sentence C (11 words)
    ("1", "movie"),  # 7: in A and in C: goes with C
    ("0", "the plot is a mess ."),  # 8: a duplicate of B
    ("1", "witty"),  # 9: in A and in its phrase 1: goes with A
    ("0", "plot is"),  # 10: only in B
    ("1", "wit"),  # 11: "witty" does not hold "wit" on word boundaries: a group of its own
]


def test_sentence_groups_put_each_phrase_with_the_longest_row_holding_it():
    assert C.sentence_groups([t for _, t in SST2_ROWS]) == [0, 0, 0, 3, 6, 3, 6, 6, 3, 0, 3, 11]


def test_sst2_group_split_keeps_groups_whole_and_counts_the_overlap_left():
    groups = {0: "A", 1: "A", 2: "A", 9: "A", 3: "B", 5: "B", 8: "B", 10: "B", 4: "C", 6: "C", 7: "C", 11: "D"}
    seen_c_alone = False
    for seed in range(40):
        train, (held,), overlap = C.sst2_group_split(SST2_ROWS, [3], seed=seed)
        assert len(held) <= 3 and len(train) + len(held) == len(SST2_ROWS)
        held_groups = {groups[i] for i, row in enumerate(SST2_ROWS) if row in held}
        train_groups = {groups[i] for i, row in enumerate(SST2_ROWS) if row in train}
        assert not held_groups & train_groups, (seed, held_groups, train_groups)  # no group on both sides
        # the overlap, counted by brute force: held-out rows that are a run of whole words of a training row
        inside = sum(any(f" {t} " in f" {u} " for _, u in train) for _, t in held)
        equal = sum(any(t == u for _, u in train) for _, t in held)
        assert overlap["held_out_rows"] == len(held) and overlap["parts"][0]["held_out_rows"] == len(held)
        assert (overlap["inside_training_row"], overlap["equal_to_training_row"]) == (inside, equal), seed
        if held_groups == {"C"}:
            seen_c_alone = True
            # "the plot" is in B's sentence and "movie" in A's, both training rows; C's own sentence is in none
            assert (overlap["inside_training_row"], overlap["equal_to_training_row"]) == (2, 0)
    assert seen_c_alone, "no seed held out C alone: the test checks less than it says"


def test_sst2_slices_dev_is_whole_sentence_groups(tmp_path, monkeypatch):
    """train_throughput's SST-2 dev: whole sentence groups; train: the first rows of the rest."""
    import gzip

    monkeypatch.setattr(C, "CACHE", tmp_path / "cache")
    (tmp_path / "root" / "sst2").mkdir(parents=True)
    body = "label\tsentence\r\n" + "".join(f"{lab}\t{text}\r\n" for lab, text in SST2_ROWS)
    (tmp_path / "root" / "sst2" / "train.tsv.gz").write_bytes(gzip.compress(body.encode()))
    files = C.sst2_slices(tmp_path / "root", 4, 3)
    train, dev = C.read_tsv(files["train"]), C.read_tsv(files["dev"])
    groups = C.sentence_groups([t for _, t in SST2_ROWS])
    group_of = {row: g for row, g in zip(SST2_ROWS, groups)}
    assert len(train) == 4 and 1 <= len(dev) <= 3
    assert not {group_of[r] for r in train} & {group_of[r] for r in dev}
    rest = [r for r in SST2_ROWS if group_of[r] not in {group_of[d] for d in dev}]
    assert train == rest[:4]  # file order
    assert files["dev"].name == "sst2-grouped3-dev-3.tsv"


def test_verbatim_overlap_counts_rows_inside_and_identical():
    train = ["the plot thickens", "the plot is a mess .", "a movie"]
    held = ["the plot", "movie", "the plot is a mess .", "the plot is a mess .", "wit", "plot thickens nicely"]
    assert C.verbatim_overlap(held, train) == {"held_out_rows": 6, "inside_training_row": 4, "equal_to_training_row": 2}


def test_multitask_verdict_rule():
    import multitask_quality as mq

    assert mq.verdict([1.0, 1.2, 0.8]) == "gain"  # mean 1.0, sd 0.2
    assert mq.verdict([-1.0, -1.2, -0.8]) == "loss"
    assert mq.verdict([0.5, -0.1, 0.4]) == "no difference within the seeds' spread"  # mean 0.27, sd 0.32
    assert mq.verdict([0.3]).startswith("undecided")


def test_multitask_quality_quick_reports_seeds_verdicts_and_trains_nothing_twice(tmp_path):
    """--quick end to end without the shared data: 2 seeds x (two tasks alone + jointly), every number in the JSON
    consistent with the table and the verdict rule, report splits apart from training data, and a second invocation
    that takes every run from the cache."""
    import json
    import os
    import statistics
    import subprocess

    import multitask_quality as mq

    env = {**os.environ, "NLPKIT_BENCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "NLPKIT_BENCHMARK_DATA": str(tmp_path / "nowhere")}

    def run() -> tuple[str, dict]:
        out_json = tmp_path / "quality.json"
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "multitask_quality.py"), "--quick", "--json",
                               str(out_json)], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout, json.loads(out_json.read_text())

    out, result = run()
    assert "budget rule: every run trains 8 epochs" in out and "DEPARTURE from the rule: --quick" in out
    assert "6 runs: 0 from the cache" in out and "6 to train" in out
    assert result["seeds"] == [42, 43] and result["trainer"]["epochs"] == 1
    runs = {tuple(r["id"]): r for r in result["runs"]}
    assert len(runs) == 6 and not any(r["from_cache"] for r in runs.values())
    for seed in (42, 43):
        joint = runs[("joint", "default", seed)]
        for n in ("sst2", "trec"):
            single = runs[("single", n, seed)]
            assert joint["steps_per_task"][n] == single["steps"] > 0  # the proportional sampler: equal budgets
            assert single["train_wall_s"] > 0 and single["evaluate_wall_s"] > 0
    for n, entry in result["summary"]["default"].items():
        rep = entry["report"]
        alone = [runs[("single", n, s)]["report"][n] for s in (42, 43)]
        joint = [runs[("joint", "default", s)]["report"][n] for s in (42, 43)]
        assert rep["alone"] == alone and rep["joint"] == joint
        diffs = [j - a for j, a in zip(joint, alone)]
        assert rep["difference"] == pytest.approx(diffs)
        assert rep["difference_mean"] == pytest.approx(statistics.fmean(diffs))
        assert rep["difference_sd"] == pytest.approx(statistics.stdev(diffs))
        m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        expected = "gain" if m - sd > 0 else "loss" if m + sd < 0 else "no difference within the seeds' spread"
        assert entry["verdict"] == expected
        assert f"{mq.TASKS[n].title}: joint - alone on the report split" in out and expected.upper() in out
        assert all(0 <= v <= 100 for v in alone + joint)
    assert "SST-2 accuracy: joint - alone" in out and "TREC-6 accuracy: jointly" in out
    # report splits: their size, and no report text among the training texts
    for n, info in result["data"].items():
        assert info["report_examples"] == mq.QUICK["report"]
        files = {k: Path(v) for k, v in info["files"].items()}
        if n == "sst2":
            texts = {k: {line.split("\t", 1)[1] for line in f.read_text().splitlines()[1:]} for k, f in files.items()}
            assert "overlap_with_train_side" in info and "held-out rows" in out
        else:
            texts = {k: {line.split(" ", 1)[1] for line in f.read_text(encoding="latin-1").splitlines()}
                     for k, f in files.items()}
        assert not texts["report"] & texts["train"] and not texts["select"] & texts["train"]
        assert not texts["report"] & texts["select"]

    again, second = run()
    assert "6 runs: 6 from the cache" in again and "0 to train" in again
    assert all(r["from_cache"] for r in second["runs"])
    assert second["summary"] == result["summary"]
