"""Precision "auto" on CPUs (faked capabilities), the phase breakdown in metrics.json, trainer.eval_max_examples,
and bf16 / int8 inference of a loaded checkpoint."""
import json

import pytest
import torch

from nlpkit.engine.precision import choose_precision, cpu_bf16, cpu_flags


def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


@pytest.mark.parametrize("flags,expected", [
    ({"fpu", "avx2", "avx512f", "avx512_bf16"}, "bf16"),  # AVX512-BF16 (AMD Zen 4, Intel Cooper Lake)
    ({"fpu", "avx512f", "amx_bf16", "amx_tile"}, "bf16"),  # AMX (Intel Sapphire Rapids)
    ({"fpu", "avx2", "avx512f"}, "no"),  # AVX-512 without bf16: emulated, slower than fp32
    ({"fpu", "sse4_2"}, "no"),
])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, flags, expected):
    _no_gpu(monkeypatch)
    monkeypatch.delenv("NLPKIT_CPU_BF16", raising=False)
    monkeypatch.setattr("nlpkit.engine.precision.cpu_flags", lambda path="/proc/cpuinfo": flags)
    chosen, why = choose_precision()
    assert chosen == expected
    assert ("no native bf16" in why) == (expected == "no")


def test_auto_precision_without_cpu_flags_is_fp32(monkeypatch):
    _no_gpu(monkeypatch)
    monkeypatch.delenv("NLPKIT_CPU_BF16", raising=False)
    monkeypatch.setattr("nlpkit.engine.precision.cpu_flags", lambda path="/proc/cpuinfo": None)
    assert choose_precision() == ("no", "this system does not list CPU flags")


def test_environment_overrides_detection_both_ways(monkeypatch):
    _no_gpu(monkeypatch)
    monkeypatch.setattr("nlpkit.engine.precision.cpu_flags", lambda path="/proc/cpuinfo": {"avx512_bf16"})
    monkeypatch.setenv("NLPKIT_CPU_BF16", "0")
    assert choose_precision()[0] == "no"
    monkeypatch.setattr("nlpkit.engine.precision.cpu_flags", lambda path="/proc/cpuinfo": set())
    monkeypatch.setenv("NLPKIT_CPU_BF16", "1")
    assert choose_precision() == ("bf16", "NLPKIT_CPU_BF16=1")


def test_cpu_flags_reads_x86_and_arm_lines(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu vme avx512f avx512_bf16\n\nflags : other\n")
    assert cpu_flags(str(x86)) == {"fpu", "vme", "avx512f", "avx512_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(str(arm)) == {"fp", "asimd", "bf16"}
    assert cpu_flags(str(tmp_path / "missing")) is None
    assert cpu_bf16(set())[0] is False


def test_trainer_picks_and_logs_cpu_bf16(monkeypatch, tmp_path):
    """The whole path: config "auto" -> Accelerator(mixed_precision="bf16") and the reason in the log line."""
    import accelerate
    from types import SimpleNamespace

    from nlpkit.engine.config import RunConfig
    from nlpkit.engine.trainer import Trainer

    _no_gpu(monkeypatch)
    monkeypatch.delenv("NLPKIT_CPU_BF16", raising=False)
    monkeypatch.setattr("nlpkit.engine.precision.cpu_flags", lambda path="/proc/cpuinfo": {"avx512_bf16"})
    seen = {}
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kwargs: seen.update(kwargs) or SimpleNamespace(**kwargs))
    trainer = Trainer(RunConfig.from_dict({"tasks": [{"type": "ner"}], "output_dir": str(tmp_path)}))
    trainer._accelerator()
    assert seen["mixed_precision"] == "bf16"
    assert "avx512_bf16" in trainer.precision_why and "--precision fp32" in trainer.precision_why
    explicit = Trainer(RunConfig.from_dict({"tasks": [{"type": "ner"}], "output_dir": str(tmp_path),
                                            "precision": {"compute": "fp32"}}))
    explicit._accelerator()
    assert seen["mixed_precision"] == "no" and explicit.precision_why == "asked for"


# ---- the phase clock ------------------------------------------------------------------------------
def test_phase_clock_nests_exclusively(monkeypatch):
    from nlpkit.engine import phases

    now = [100.0]
    monkeypatch.setattr(phases.time, "perf_counter", lambda: now[0])
    clock = phases.PhaseClock(start=90.0)
    with clock("model"):
        now[0] += 2
        with clock("tokenizer"):
            now[0] += 3
        now[0] += 1
    with clock("tokenizer"):
        now[0] += 0.5
    summary = clock.summary()
    assert summary == {"model": 3.0, "tokenizer": 3.5, "other": 10.0, "total": 16.5}
    assert clock.line().startswith("time: model 3.0s, tokenizer 3.5s, other 10.0s")


# ---- end to end: phases in metrics.json, the dev cap, and a bf16 run --------------------------------
def _run(tmp_path, name, **trainer):
    from conftest import tiny_config

    import nlpkit

    config = tiny_config("ner", tmp_path / name, max_steps=4, **trainer)
    return nlpkit.train(config)


#: the trainer's methods each phase wraps (model: _setup_model, less the tokenizer trained inside it)
PHASE_METHODS = {"read": "_setup_data", "encode": "_setup_batches", "evaluation": "_evaluate_and_select",
                 "saving": "_save_training"}


def test_metrics_have_a_phase_breakdown_and_eval_cap(tmp_path, capsys, monkeypatch):
    """Each phase against a clock of the test's own: the seconds spent inside the trainer methods a phase wraps
    (timed by wrappers around them) and the wall time around the whole call. A phase counted twice, one left
    out (its seconds would land in "other") or a total that starts late all fail one of these."""
    import time

    from nlpkit.engine.trainer import Trainer

    spent: dict[str, float] = {}

    def timed(name, method):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    for method in {*PHASE_METHODS.values(), "_setup_model", "train_step"}:
        monkeypatch.setattr(Trainer, method, timed(method, getattr(Trainer, method)))
    began = time.perf_counter()
    full = _run(tmp_path, "full")
    wall = time.perf_counter() - began
    said_full = capsys.readouterr().out
    monkeypatch.undo()
    capped = _run(tmp_path, "capped", eval_max_examples=2)
    said = capsys.readouterr().out
    phases = json.loads((full.output_dir / "metrics.json").read_text())["phases"]
    for name in ("read", "tokenizer", "model", "encode", "first_step", "steps", "evaluation", "saving", "total"):
        assert name in phases and phases[name] > 0, (name, phases)
    # the same seconds as the methods they wrap, give or take the clock's bookkeeping, the rounding to 1 ms and a
    # scheduler pause on a busy machine; a phase counted twice or left out is off by its whole length
    slack = 0.05
    for phase, method in PHASE_METHODS.items():
        assert phases[phase] == pytest.approx(spent[method], abs=slack), (phase, phases, spent)
    assert phases["model"] + phases["tokenizer"] == pytest.approx(spent["_setup_model"], abs=slack), (phases, spent)
    assert phases["first_step"] + phases["steps"] == pytest.approx(spent["train_step"], abs=slack), (phases, spent)
    # the total: this run's wall time, less what happens before the trainer starts its clock and after the summary
    named = sum(v for k, v in phases.items() if k not in ("other", "total"))
    assert named <= phases["total"] + 0.005 and phases["total"] <= wall + 0.005, (phases, wall)
    assert phases["total"] >= wall - max(0.5, 0.1 * wall), (phases, wall)
    assert phases["other"] < 0.5 * wall, (phases, wall)  # the unclocked set-up is small next to the phases
    assert "\ntime: " in said_full and "(total " in said_full
    dev_full = int(said_full.split(" train, ")[1].split(" dev)")[0])
    assert dev_full > 2 and f"evaluating on the first 2 of {dev_full} examples" in said
    assert "train, 2 dev)" in said
    assert json.loads((capped.output_dir / "metrics.json").read_text())["tasks"]["ner"]


def test_bf16_training_on_cpu_records_why(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPKIT_CPU_BF16", "1")
    result = _run(tmp_path, "bf16")
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["precision_reason"].startswith("auto: NLPKIT_CPU_BF16=1")


# ---- inference precision --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ner_checkpoint(tmp_path_factory):
    from conftest import tiny_config

    import nlpkit

    tmp = tmp_path_factory.mktemp("ner")
    return nlpkit.train(tiny_config("ner", tmp, max_steps=30)).output_dir


def test_bf16_and_int8_inference_agree_with_fp32(ner_checkpoint):
    """Per-token labels of the three ways to run one checkpoint: low precision moves probabilities a little and
    may flip a near tie, not more."""
    import nlpkit
    from nlpkit.engine.evaluation import predict_features

    fp32 = nlpkit.load(ner_checkpoint)
    bf16 = nlpkit.load(ner_checkpoint, precision="bf16")
    int8 = nlpkit.load(ner_checkpoint, quantize="int8")
    assert (fp32.precision, bf16.precision, int8.precision, int8.quantized) == ("fp32", "bf16", "fp32", True)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    task = fp32.task()
    examples = list(task.read(task.default_data()["train"]))[:60]
    features = task.encode(examples)

    def outputs(pipe):
        return predict_features(pipe.task(), pipe.model, features, 16, autocast=pipe._autocast)

    ref = outputs(fp32)
    for pipe in (bf16, int8):
        got = outputs(pipe)
        same = sum(a == b for (ia, _), (ib, _) in zip(ref, got) for a, b in zip(ia, ib))
        total = sum(len(ia) for ia, _ in ref)
        worst = max(abs(a - b) for (_, pa), (_, pb) in zip(ref, got) for a, b in zip(pa, pb))
        assert same / total >= 0.95 and worst < 0.1, (pipe.precision, pipe.quantized, same / total, worst)
    for pipe in (bf16, int8):  # the whole predict path, decoding included
        assert isinstance(pipe.predict("John Smith lives in Paris")["entities"], list)
    assert nlpkit.load(ner_checkpoint, precision="auto").precision in ("fp32", "bf16")


def test_bad_inference_settings_are_refused_before_loading(ner_checkpoint):
    import nlpkit
    from nlpkit.sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="precision must be one of"):
        nlpkit.load(ner_checkpoint, precision="fp8")
    with pytest.raises(ConfigError, match="quantize must be one of"):
        nlpkit.load(ner_checkpoint, quantize="int4")
    with pytest.raises(ConfigError, match="not bf16"):
        nlpkit.load(ner_checkpoint, precision="bf16", quantize="int8")


def test_training_precision_keeps_a_choice_unless_the_device_cannot_honour_it(monkeypatch):
    from nlpkit.engine.precision import display_name, training_precision

    monkeypatch.setenv("NLPKIT_CPU_BF16", "0")
    assert training_precision("fp32", cpu=True) == ("no", "asked for", None)
    assert training_precision("bf16", cpu=True) == ("bf16", "asked for", None)
    precision, why, note = training_precision("fp16", cpu=True)
    assert (precision, why) == ("no", "asked for") and "fp16 needs a CUDA GPU" in note
    precision, why, note = training_precision("auto", cpu=True)
    assert precision == "no" and why.startswith("auto: NLPKIT_CPU_BF16=0") and note is None
    assert [display_name(p) for p in ("no", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
