"""Sharded training (FSDP2 on CPU: 2 gloo processes under torchrun) against one process and against DDP.

The comparisons are tight for the reason tests/test_distributed.py gives: dropout 0, and training sentences of
exactly 8 words, so each process's mean loss averages over the same number of words and the mean over processes
is the loss of the global batch. FSDP reduce-scatters (averages) the gradients where DDP all-reduces them;
what remains is float32 summation order, measured at ~3e-7 relative over 30 steps.
"""
from __future__ import annotations

import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import nlpkit
from nlpkit.engine import checkpoint, sharding
from nlpkit.apps.cli import main
from nlpkit.sdk.errors import CheckpointError, ConfigError
from test_distributed import EVAL_BATCH, STEPS, _train_args, write_ner_files

ROOT = Path(__file__).resolve().parents[1]
SAVE_EVERY = 5
FSDP = ["--set", "distributed.sharding=fsdp"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return write_ner_files(tmp_path_factory.mktemp("ner-fsdp"))


def _args(files: Path, out: Path) -> list[str]:
    """tests/test_distributed.py's run, saving every 5 steps (for the kill -9 test), without plots."""
    return [*_train_args(files, out), "--set", f"checkpoint.save_every={SAVE_EVERY}", "--set", "logging.plots=false",
            "--set", "logging.tensorboard=false"]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nlpkit", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory) -> dict:
    """FSDP with 2 processes (in the background) and the same run in this process; then DDP with 2 processes."""
    folder = tmp_path_factory.mktemp("fsdp")
    fsdp = _start([*_args(files, folder / "fsdp"), "--num-processes", "2", *FSDP])
    assert main(_args(files, folder / "one")) == 0
    stdout = _finish(fsdp)
    _finish(_start([*_args(files, folder / "ddp"), "--num-processes", "2"]))
    return {"fsdp": folder / "fsdp", "one": folder / "one", "ddp": folder / "ddp", "stdout": stdout}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _losses(run: Path, task: str = "ner") -> list[float]:
    return [r[f"loss/{task}"] for r in _records(run) if f"loss/{task}" in r]


def _evals(run: Path) -> list[dict]:
    return [r["eval"] for r in _records(run) if "eval" in r]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    latest = checkpoint.latest_training(run)
    assert checkpoint.step_of(latest) == STEPS
    return checkpoint.read_tensors(latest)


# ---- FSDP against one process ----------------------------------------------------------------------
def test_fsdp_really_sharded_over_two_processes(runs):
    metrics = _metrics(runs["fsdp"])
    assert metrics["processes"] == 2 and metrics["sharding"] == "fsdp"
    assert "sharding: FSDP2 (fully_shard on 3 units (blocks + root)) over 2 processes" in runs["stdout"]
    step = checkpoint.latest_training(runs["fsdp"])
    assert sorted(p.name for p in (step / sharding.SHARDED_DIR).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (step / checkpoint.WEIGHTS_FILE).exists()  # nothing gathered for a step checkpoint


def test_fsdp_losses_equal_one_process_within_1e_5(runs):
    fsdp, one = _losses(runs["fsdp"]), _losses(runs["one"])
    assert len(fsdp) == len(one) == STEPS
    assert fsdp == pytest.approx(one, rel=1e-5)
    assert sum(one[-10:]) < sum(one[:10])  # it learned: the match is not between two flat lines
    worst = max(abs(a - b) / abs(b) for a, b in zip(fsdp, one))
    print(f"\nFSDP2 (2 processes) vs 1 process, {STEPS} steps: worst relative loss difference {worst:.2e}; "
          f"first losses {one[0]:.6f} / {fsdp[0]:.6f}, last {one[-1]:.6f} / {fsdp[-1]:.6f}")


def test_fsdp_dev_metrics_equal_one_process(runs):
    """Every evaluation (3 of them) of the sharded model, gathered per process, scores like one process."""
    assert _evals(runs["fsdp"]) == _evals(runs["one"]) and len(_evals(runs["one"])) == 3
    assert _metrics(runs["fsdp"])["tasks"] == _metrics(runs["one"])["tasks"]


def test_fsdp_best_is_an_ordinary_checkpoint_with_the_same_predictions_in_one_process(runs, files):
    from safetensors import safe_open

    best, single_best = runs["fsdp"] / "best", runs["one"] / "best"
    with safe_open(str(best / checkpoint.WEIGHTS_FILE), "pt") as a, \
            safe_open(str(single_best / checkpoint.WEIGHTS_FILE), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())  # same names, tied tensors once: the unsharded format
    model = nlpkit.load(runs["fsdp"])
    assert model.evaluate(str(files / "dev.conll"), batch_size=EVAL_BATCH) == _metrics(runs["fsdp"])["tasks"]["ner"]
    sentence = "Anna visited Oslo today with Acme Corp"
    assert model.predict([sentence]) == nlpkit.load(runs["one"]).predict([sentence])


def test_fsdp_holds_about_half_of_what_ddp_holds_per_process(runs):
    fsdp, ddp = _metrics(runs["fsdp"])["per_process"], _metrics(runs["ddp"])["per_process"]
    print()
    for name, rows in (("DDP ", ddp), ("FSDP", fsdp)):
        for row in rows:
            print(f"{name} rank {row['rank']}: parameters {row['param_bytes']:,} B, gradients {row['grad_bytes']:,} B, "
                  f"optimizer state {row['optimizer_state_bytes']:,} B, peak RSS {row['peak_rss_mb']:,.0f} MB")
    full = _metrics(runs["one"])
    for row in ddp:  # DDP: everything in every process
        assert row["param_bytes"] == full["param_bytes_per_process"]
        assert row["optimizer_state_bytes"] == full["optimizer_state_bytes_per_process"]
    for row in fsdp:
        for key in ("param_bytes", "grad_bytes", "optimizer_state_bytes"):
            assert 0.45 < row[key] / ddp[0][key] < 0.55, (key, row[key], ddp[0][key])


# ---- sharded checkpoints: kill -9, resume, reshard ---------------------------------------------------
def _kill_at(argv: list[str], out: Path, step: int) -> None:
    """Start a 2-process FSDP run and SIGKILL all its processes (launcher and workers) once step-N is saved."""
    import psutil

    proc = _start(argv)
    state = out / checkpoint.CHECKPOINTS_DIR / f"step-{step}" / checkpoint.STATE_FILE
    deadline = time.time() + 240
    try:
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert state.exists(), proc.communicate()[1][-3000:]
    finally:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)] \
            if proc.poll() is None else []
        for p in family:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def killed(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("killed") / "run"
    _kill_at([*_args(files, out), "--num-processes", "2", *FSDP], out, 15)
    return out


def test_kill_9_then_resume_ends_bit_identical_to_an_uninterrupted_fsdp_run(runs, killed, tmp_path, files):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    latest = checkpoint.latest_training(run)
    assert checkpoint.step_of(latest) in (15, 20)  # killed soon after step 15 was saved
    stdout = _finish(_start([*_args(files, run), "--num-processes", "2", *FSDP]))
    assert f"resuming from {latest}" in stdout
    resumed, uninterrupted = _final_weights(run), _final_weights(runs["fsdp"])
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    a, b = checkpoint.read_tensors(run / "best"), checkpoint.read_tensors(runs["fsdp"] / "best")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(run) == _losses(runs["fsdp"])
    assert _metrics(run)["tasks"] == _metrics(runs["fsdp"])["tasks"]


def test_a_two_process_sharded_checkpoint_resumes_in_one_process(runs, killed, tmp_path, files, capsys):
    """DCP reshards on load: the optimizer state of 2 shards goes into one unsharded optimizer."""
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    assert main([*_args(files, run), *FSDP]) == 0  # fsdp on one process: nothing to shard, trains unsharded
    out = capsys.readouterr().out
    assert "2 processes then, 1 now" in out
    resumed, uninterrupted = _final_weights(run), _final_weights(runs["fsdp"])
    assert max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed) < 1e-4
    assert _losses(run) == pytest.approx(_losses(runs["fsdp"]), rel=1e-5)


def test_a_sharded_step_checkpoint_loads_in_one_process_without_torch_distributed(runs, files):
    import torch.distributed as dist

    assert not dist.is_initialized()
    step = checkpoint.latest_training(runs["fsdp"])
    model = nlpkit.load(step)
    assert model.evaluate(str(files / "dev.conll"), batch_size=EVAL_BATCH) == _evals(runs["fsdp"])[-1]["ner"]


def test_an_unsharded_checkpoint_is_refused_by_an_fsdp_resume_before_anything_is_written(runs):
    engine = sharding.Fsdp(SimpleNamespace(distributed_type="DistributedType.MULTI_CPU", num_processes=2))
    with pytest.raises(ConfigError, match="written without sharding.*distributed.sharding=none"):
        engine.check_resume(checkpoint.latest_training(runs["one"]))
    engine.check_resume(checkpoint.latest_training(runs["fsdp"]))


def test_a_tampered_shard_index_cannot_run_code(runs, tmp_path):
    """DCP's .metadata is a pickle; nlpkit reads it with an unpickler that builds only DCP's own records."""
    step = tmp_path / "step"
    shutil.copytree(checkpoint.latest_training(runs["fsdp"]), step)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    (step / sharding.SHARDED_DIR / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match=r"\.metadata: not a readable sharded-checkpoint index.*not allowed"):
        sharding.read_model_tensors(step)
    assert not marker.exists()


def test_a_truncated_shard_is_reported_not_loaded(runs, tmp_path):
    step = tmp_path / "step"
    shutil.copytree(checkpoint.latest_training(runs["fsdp"]), step)
    shard = step / sharding.SHARDED_DIR / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="__1_0.distcp has 1000 bytes"):
        nlpkit.load(step)
    with pytest.raises(CheckpointError, match="__1_0.distcp has 1000 bytes"):
        checkpoint.read_training_state(step)


# ---- LoRA, gradient checkpointing, accumulation, generation, tied weights -------------------------
def test_fsdp_with_lora_gradient_checkpointing_and_generation_matches_one_process(tmp_path):
    """Two tasks on a tiny Llama (tied embeddings) with one LoRA adapter, gradient checkpointing and 2-step
    accumulation; translation generates during evaluation (each process decodes its own batches), which
    also runs before the first step. Ragged target lengths make the mean of per-process token means differ
    slightly from the global mean (~2e-5 measured), so the losses are compared at 1e-4; the evaluations exactly."""
    argv = ["train", "--task", "sentiment", "--task", "translation", "--backbone", "mini-decoder", "--peft", "lora",
            "--max-steps", "8", "--batch-size", "8", "--no-progress", "--set", "backbone.dropout=0",
            "--set", "backbone.peft.dropout=0", "--option", "sentiment:dropout=0", "--set", "logging.log_every=1",
            "--set", "trainer.eval_every=4", "--set", "performance.gradient_checkpointing=true",
            "--set", "trainer.grad_accum=2", "--set", "trainer.eval_at_start=true",
            "--option", "translation:max_new_tokens=12", "--set", "logging.plots=false",
            "--set", "logging.tensorboard=false"]
    fsdp = _start([*argv, "--output-dir", str(tmp_path / "fsdp"), "--num-processes", "2", *FSDP])
    assert main([*argv, "--output-dir", str(tmp_path / "one")]) == 0
    stdout = _finish(fsdp)
    assert "sharding: FSDP2" in stdout and "peft: lora" in stdout
    # two shards sum gradients in another order than one process: the drift over 8 steps depends on the batches
    # drawn (with the numpy batch order of nlpkit.sdk.data the last translation loss differed by 1.0004e-4 relative)
    for task in ("sentiment", "translation"):
        assert _losses(tmp_path / "fsdp", task) == pytest.approx(_losses(tmp_path / "one", task), rel=2e-4)
    assert _evals(tmp_path / "fsdp") == _evals(tmp_path / "one") and len(_evals(tmp_path / "one")) == 3
    from safetensors import safe_open

    with safe_open(str(tmp_path / "fsdp" / "best" / checkpoint.WEIGHTS_FILE), "pt") as a, \
            safe_open(str(tmp_path / "one" / "best" / checkpoint.WEIGHTS_FILE), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())


# ---- units, without processes -----------------------------------------------------------------------
def test_blocks_are_the_transformer_layers_of_each_architecture():
    import llm_models
    from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

    def wrapped(model):
        return SimpleNamespace(backbone=SimpleNamespace(model=model))

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                intermediate_size=32))
    assert [type(b).__name__ for b in sharding.blocks(wrapped(bert))] == ["BertLayer"] * 3
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                             num_decoder_layers=3, num_heads=2))
    assert [type(b).__name__ for b in sharding.blocks(wrapped(t5))] == ["T5Block"] * 5
    llama = llm_models.model("llama", llm_models.tokenizer("llama"))
    assert [type(b).__name__ for b in sharding.blocks(wrapped(llama))] == ["LlamaDecoderLayer"] * 2


def test_requested_sharding_from_the_config_key_or_an_accelerate_config(monkeypatch):
    for key in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(key, raising=False)
    assert sharding.requested("none") == "none" and sharding.requested("fsdp") == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="FSDP version 1.*fsdp_version: 2"):
        sharding.requested("none")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert sharding.requested("none") == "fsdp"
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert sharding.requested("none") == "none"  # ZeRO-2: every process keeps all weights
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert sharding.requested("none") == "zero3"


def test_zero3_config_parses_and_is_refused_without_cuda_or_deepspeed(monkeypatch):
    import importlib.util

    import yaml

    from nlpkit.engine.config import RunConfig

    config = RunConfig.from_dict({"tasks": [{"type": "ner"}], "distributed": {"sharding": "zero3"}})
    assert config.distributed.sharding == "zero3" and config.to_dict()["distributed"] == {"sharding": "zero3"}
    with pytest.raises(ConfigError, match="distributed.sharding"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "distributed": {"sharding": "zero2"}})
    recipe = yaml.safe_load((ROOT / "recipes" / "distributed" / "deepspeed_zero3.yaml").read_text())
    assert recipe["deepspeed_config"]["zero_stage"] == 3 and recipe["deepspeed_config"]["zero3_save_16bit_model"]
    plugin = sharding.deepspeed_plugin(1.0)
    assert plugin.zero_stage == 3 and plugin.zero3_save_16bit_model and plugin.gradient_accumulation_steps == 1
    with pytest.raises(ConfigError, match="ZeRO-3 needs CUDA GPUs.*distributed.sharding=fsdp"):
        sharding.check_zero3(cuda=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the deepspeed package.*pip install deepspeed"):
        sharding.check_zero3(cuda=True)


def test_zero3_on_this_cpu_machine_is_refused_at_start_up_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--task", "ner", "--max-steps", "2", "--output-dir", str(out), "--set",
                 "distributed.sharding=zero3"]) == 2
    err = capsys.readouterr().err
    assert "DeepSpeed ZeRO-3 needs CUDA GPUs" in err and "Traceback" not in err
    assert not out.exists()
