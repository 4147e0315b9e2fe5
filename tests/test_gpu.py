"""The CUDA paths, each on one GPU with a tiny random model built here: bf16 training and inference, fp16 with its
gradient scaler (asked for, and as the fallback of a GPU without bf16 units), QLoRA on a 4-bit and an 8-bit decoder,
FSDP2's CUDA code on a one-rank NCCL group, DeepSpeed ZeRO-3 through Accelerate, LoRA merging on the GPU, and
benchmarks/mfu.py on the device.

Every test here is marked ``gpu``: tests/conftest.py skips them, with the reason, where torch sees no CUDA device,
so the normal run collects and skips them. scripts/gpu_check.sh runs them (and mfu.py) on a GPU machine in a few
minutes. A test that needs an optional package (bitsandbytes, deepspeed) skips with the package's name when it is
missing.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nlpkit
from nlpkit.engine import checkpoint
from nlpkit.apps.cli import main
from nlpkit.engine.config import RunConfig
from nlpkit.engine.trainer import Trainer

from conftest import tiny_config
from llm_models import decoder_folder

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
NER_DATA = ROOT / "tasks" / "data" / "ner"
STEPS = 30


# ---- helpers ---------------------------------------------------------------------------------------
def _metrics(run: Path) -> dict:
    return json.loads((Path(run) / "metrics.json").read_text())


def _losses(run: Path, task: str = "ner") -> list[float]:
    records = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]
    return [r[f"loss/{task}"] for r in records if f"loss/{task}" in r]


def _learned(losses: list[float], steps: int) -> None:
    """Every logged loss finite, one per step, and the last third lower than the first."""
    assert len(losses) == steps, losses
    assert all(math.isfinite(x) for x in losses), losses
    third = max(1, steps // 3)
    assert sum(losses[-third:]) < sum(losses[:third]), losses


def _ner(tmp: Path, steps: int = STEPS, **trainer) -> dict:
    """A tiny from-scratch NER run on the bundled data, one log record per step, one evaluation at the end."""
    return tiny_config("ner", tmp, max_steps=steps, log_every=1, eval_every=steps, plots=False, tensorboard=False,
                       **trainer)


def _scores_close(a: dict, b: dict, tolerance: float) -> None:
    """The numeric scores of two evaluations agree within ``tolerance``, absolute or relative, whichever is larger
    (NER's F1 is a fraction, its token accuracy a percentage); the same keys on both sides."""
    numbers = {k for k, v in a.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers and numbers == {k for k, v in b.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in numbers:
        assert a[key] == pytest.approx(b[key], abs=tolerance, rel=tolerance), (key, a[key], b[key])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_args(out: Path, steps: int = 10) -> list[str]:
    """`nlpkit train` of a tiny NER model, dropout off (two engines must compute the same function)."""
    return ["train", "--task", "ner", "--backbone", "mini", "--max-steps", str(steps), "--batch-size", "8",
            "--no-progress", "--output-dir", str(out), "--option", "dropout=0", "--set", "backbone.dropout=0",
            "--set", "backbone.vocab_size=300", "--set", "logging.log_every=1", "--set", f"trainer.eval_every={steps}",
            "--set", "logging.plots=false", "--set", "logging.tensorboard=false"]


def _run(cmd: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ---- bf16 and fp16 -----------------------------------------------------------------------------------
def test_bf16_training_and_inference_on_cuda(tmp_path):
    from nlpkit.engine.evaluation import predict_features

    run = nlpkit.train(_ner(tmp_path, precision="bf16")).output_dir
    metrics = _metrics(run)
    assert metrics["device"].startswith("cuda") and metrics["precision"] == "bf16" and metrics["processes"] == 1
    assert metrics["skipped_steps"] == 0
    _learned(_losses(run), STEPS)

    gpu = nlpkit.load(run, device="cuda")
    gpu_bf16 = nlpkit.load(run, device="cuda", precision="bf16")
    cpu = nlpkit.load(run, device="cpu")
    assert next(gpu.model.parameters()).device.type == "cuda" and (gpu.precision, gpu_bf16.precision) == ("fp32", "bf16")
    dev = str(NER_DATA / "dev.conll")
    # the same weights score the same on the GPU as on the CPU (fp32 both: only summation order differs)
    _scores_close(gpu.evaluate(dev), cpu.evaluate(dev), 0.005)
    # bf16 autocast on the GPU moves probabilities a little and may flip a near tie, not more
    task = gpu.task()
    features = task.encode(list(task.read(dev))[:60])
    ref = predict_features(task, gpu.model, features, 16, autocast=gpu._autocast)
    got = predict_features(gpu_bf16.task(), gpu_bf16.model, features, 16, autocast=gpu_bf16._autocast)
    same = sum(a == b for (ia, _), (ib, _) in zip(ref, got) for a, b in zip(ia, ib))
    total = sum(len(ia) for ia, _ in ref)
    worst = max(abs(a - b) for (_, pa), (_, pb) in zip(ref, got) for a, b in zip(pa, pb))
    assert total > 0 and same / total >= 0.95 and worst < 0.1, (same / total, worst)
    assert isinstance(gpu_bf16.predict("John Smith lives in Paris")["entities"], list)


def _fp16_run(tmp_path: Path, precision: str) -> tuple[Trainer, dict]:
    trainer = Trainer(RunConfig.from_dict(_ner(tmp_path, precision=precision)))
    trainer.run()
    return trainer, _metrics(trainer.out)


def _assert_scaled_fp16(trainer: Trainer, metrics: dict) -> None:
    """fp16 autocast with Accelerate's GradScaler: dynamic loss scaling, overflow steps skipped by the scaler
    (not counted as nlpkit's non-finite skips), and the model still learns."""
    acc = trainer.acc
    assert acc.mixed_precision == "fp16" and metrics["precision"] == "fp16"
    assert isinstance(acc.scaler, torch.amp.GradScaler) and acc.scaler.is_enabled()
    assert 0 < acc.scaler.get_scale() <= 2.0**16  # starts at 2**16, halves on overflow, grows after 2000 good steps
    assert metrics["device"].startswith("cuda") and metrics["steps"] == STEPS and metrics["skipped_steps"] == 0
    _learned(_losses(trainer.out), STEPS)


def test_fp16_training_steps_through_a_grad_scaler(tmp_path):
    trainer, metrics = _fp16_run(tmp_path, "fp16")
    _assert_scaled_fp16(trainer, metrics)
    assert metrics["precision_reason"] == "asked for"


@pytest.mark.parametrize("asked", ["auto", "bf16"])
def test_a_gpu_without_bf16_units_falls_back_to_fp16(asked, tmp_path, monkeypatch, capsys):
    """The real GPU, told that it has no bf16 units: "auto" picks fp16 (compute capability < 8), and an explicit
    bf16 on a GPU that does not support it becomes fp16 with a note; both train through the gradient scaler."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if asked == "auto":
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    else:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    trainer, metrics = _fp16_run(tmp_path, asked)
    _assert_scaled_fp16(trainer, metrics)
    said = capsys.readouterr()
    if asked == "auto":
        assert "compute capability 7.5 has no bf16 units" in metrics["precision_reason"]
    else:
        assert "precision.compute bf16 is not supported by this GPU; using fp16" in said.out + said.err


# ---- QLoRA ---------------------------------------------------------------------------------------------
QLORA_STEPS = 20


@pytest.fixture(scope="module", params=["4bit", "8bit"])
def qlora_run(request, tmp_path_factory) -> tuple[str, Trainer]:
    """A causal-LM LoRA run on a tiny Llama whose base bitsandbytes loads in 4 or 8 bits."""
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("QLoRA needs the bitsandbytes package (pip install bitsandbytes)")
    bits = request.param
    tmp = tmp_path_factory.mktemp(f"qlora-{bits}")
    config = {"tasks": [{"type": "causal-lm", "options": {"max_length": 32}}],
              "backbone": {"spec": decoder_folder(tmp / "models", "llama"), "quantize": bits,
                           "peft": {"method": "lora", "target_modules": "all-linear"}},
              "trainer": {"max_steps": QLORA_STEPS, "batch_size": 4, "eval_every": QLORA_STEPS, "lr": 1e-2},
              "logging": {"log_every": 1, "progress": False, "plots": False, "tensorboard": False},
              "output_dir": str(tmp / "run")}
    trainer = Trainer(RunConfig.from_dict(config))
    trainer.run()
    return bits, trainer


def test_qlora_trains_adapters_on_a_quantized_decoder(qlora_run):
    import bitsandbytes as bnb

    bits, trainer = qlora_run
    model = trainer.backbone.model
    assert getattr(model, f"is_loaded_in_{bits}", False)
    layer = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    quantized = [m for m in model.modules() if isinstance(m, layer)]
    assert len(quantized) >= 2 * 7  # q, k, v, o, gate, up, down of both layers: the base really is quantized
    assert all(not p.requires_grad for m in quantized for p in m.parameters())
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.requires_grad for p in lora_b)
    assert any(float(p.detach().abs().max()) > 0 for p in lora_b)  # LoRA's B starts at zero: it was trained
    metrics = _metrics(trainer.out)
    assert metrics["device"].startswith("cuda") and metrics["steps"] == QLORA_STEPS
    _learned(_losses(trainer.out, "causal-lm"), QLORA_STEPS)
    names = checkpoint.weight_names(checkpoint.resolve(trainer.out))
    backbone_names = [n for n in names if n.startswith("backbone.")]
    assert backbone_names and all("lora_" in n for n in backbone_names)  # adapters only, never the 4/8-bit base


def test_a_qlora_checkpoint_loads_again_and_generates(qlora_run):
    """The checkpoint holds the adapters and the base's spec, quantization and fingerprint (of the quantized
    weights); loading it must quantize the base the same way, match the fingerprint and generate. (Before the base
    recorded its quantization, a reload compared the unquantized weights' fingerprint and would have refused.)"""
    bits, trainer = qlora_run
    loaded = nlpkit.load(trainer.out, device="cuda")
    assert loaded.model.backbone.base.quantize == bits
    assert isinstance(loaded.predict(["Angela Merkel visited"])[0]["text"], str)


# ---- FSDP2 ---------------------------------------------------------------------------------------------
FORCE_FSDP = """
import sys
from nlpkit.engine import sharding
from nlpkit.apps.cli import main
plain = sharding.engine
sharding.engine = lambda name, acc: sharding.Fsdp(acc) if name == "fsdp" else plain(name, acc)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsdp2_engine_on_one_gpu(precision, tmp_path):
    """`distributed.sharding=fsdp` in one process trains unsharded (nothing to shard over). To run the CUDA code a
    multi-GPU FSDP2 run uses (fully_shard over NCCL, the bf16 MixedPrecisionPolicy, gathered evaluation, the full
    state dict for best/, DCP step checkpoints), a one-rank NCCL group is started and nlpkit's FSDP2 engine forced
    on it. In fp32 its losses equal the unsharded run's; in bf16 (bf16 gathers and compute) it learns."""
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    args = [*_cli_args(one), "--precision", precision, "--set", "distributed.sharding=fsdp"]
    assert main(args) == 0
    assert _metrics(one)["sharding"] == "none" and _metrics(one)["device"].startswith("cuda")
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    proc = _run([sys.executable, "-c", FORCE_FSDP, *_cli_args(fsdp), "--precision", precision,
                 "--set", "distributed.sharding=fsdp"], env)
    assert "sharding: FSDP2 (fully_shard on " in proc.stdout, proc.stdout[-3000:]
    metrics = _metrics(fsdp)
    assert metrics["sharding"] == "fsdp" and metrics["processes"] == 1 and metrics["device"].startswith("cuda")
    assert metrics["precision"] == precision
    step = checkpoint.latest_training(fsdp)
    assert sorted(p.name for p in (step / "sharded").iterdir()) == [".metadata", "__0_0.distcp"]
    if precision == "fp32":
        assert _losses(fsdp) == pytest.approx(_losses(one), rel=1e-4)
    else:
        _learned(_losses(fsdp), 10)
    # best/ holds the full weights gathered from the shards: an ordinary checkpoint, scored as in the run
    dev = str(NER_DATA / "dev.conll")
    _scores_close(nlpkit.load(fsdp, device="cuda").evaluate(dev), metrics["tasks"]["ner"],
                  0.005 if precision == "fp32" else 0.05)


# ---- DeepSpeed ZeRO-3 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["sharding-setting", "accelerate-config"])
def test_zero3_through_accelerate_on_one_gpu(how, tmp_path):
    """ZeRO-3 in one process: `distributed.sharding=zero3` under torchrun (nlpkit builds Accelerate's DeepSpeed
    plugin), and recipes/distributed/deepspeed_zero3.yaml through `accelerate launch` (check_engine fills the
    batch size and clipping Accelerate leaves on "auto")."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("ZeRO-3 needs the deepspeed package (pip install deepspeed)")
    out = tmp_path / "run"
    if how == "sharding-setting":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "nlpkit", *_cli_args(out), "--set", "distributed.sharding=zero3"]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "distributed" / "deepspeed_zero3.yaml"), "--num_processes", "1",
               "--main_process_port", str(_free_port()), "-m", "nlpkit", *_cli_args(out)]
    proc = _run(cmd, timeout=400)
    assert "sharding: DeepSpeed ZeRO-3 over 1 processes" in proc.stdout, proc.stdout[-3000:]
    metrics = _metrics(out)
    assert metrics["sharding"] == "zero3" and metrics["processes"] == 1 and metrics["device"].startswith("cuda")
    _learned(_losses(out), 10)
    assert (checkpoint.latest_training(out) / "deepspeed").is_dir()
    # best/ holds the gathered 16-bit weights: it loads in one plain process and scores about as in the run
    _scores_close(nlpkit.load(out, device="cuda").evaluate(str(NER_DATA / "dev.conll")), metrics["tasks"]["ner"], 0.05)


# ---- LoRA merge ------------------------------------------------------------------------------------------
def test_lora_merge_on_cuda_keeps_the_outputs(tmp_path):
    """A LoRA run trained on the GPU: its adapters folded into the weights on the GPU give the logits the adapters
    gave, and `nlpkit export --merge` of that run loads in transformers, without peft, with the same logits."""
    from transformers import AutoModelForCausalLM

    from nlpkit.engine import adapters

    spec = decoder_folder(tmp_path / "models", "llama")
    config = {"tasks": [{"type": "causal-lm", "options": {"max_length": 32}}],
              "backbone": {"spec": spec, "peft": {"method": "lora", "target_modules": "all-linear"}},
              "trainer": {"max_steps": 10, "batch_size": 4, "eval_every": 10, "lr": 1e-2},
              "logging": {"progress": False, "plots": False, "tensorboard": False},
              "output_dir": str(tmp_path / "run")}
    run = nlpkit.train(config).output_dir
    assert _metrics(run)["device"].startswith("cuda")
    ids = torch.randint(5, 300, (2, 12), device="cuda")

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).logits.float()

    pipe = nlpkit.load(run, device="cuda")
    backbone = pipe.model.backbone
    hf = backbone.model.eval()
    before = logits(hf)
    base_only = hf.get_submodule("model.layers.0.self_attn.q_proj")
    assert any("lora_" in n for n, _ in hf.named_parameters())
    adapters.merge(backbone)
    assert backbone.peft is None and not any("lora_" in n for n, _ in hf.named_parameters())
    assert all(p.device.type == "cuda" for p in hf.parameters())
    assert hf.get_submodule("model.layers.0.self_attn.q_proj") is not base_only  # the wrapper is gone
    after = logits(hf)
    assert (after - before).abs().max().item() <= 1e-4
    assert (before - logits(AutoModelForCausalLM.from_pretrained(spec).to("cuda").eval())).abs().max() > 1e-3  # trained

    assert main(["export", str(run), str(tmp_path / "merged"), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").to("cuda").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (logits(merged) - before).abs().max().item() <= 1e-4


# ---- benchmarks/mfu.py -----------------------------------------------------------------------------------
def test_mfu_quick_measures_the_gpu(tmp_path):
    """mfu.py --quick on the device: a data root in the benchmarks' layout made from the bundled NER data, and a
    private cache (its slices are cached by size)."""
    conll = tmp_path / "data" / "conll2003"
    conll.mkdir(parents=True)
    for source, target in (("train.conll", "train.txt.gz"), ("dev.conll", "valid.txt.gz")):
        (conll / target).write_bytes(gzip.compress((NER_DATA / source).read_bytes()))
    out = tmp_path / "mfu.json"
    proc = _run([sys.executable, str(ROOT / "benchmarks" / "mfu.py"), "--quick", "--size", "4096", "--data-root",
                 str(tmp_path / "data"), "--json", str(out)],
                env={"NLPKIT_BENCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                timeout=400)
    assert "device: GPU" in proc.stdout and "MFU" in proc.stdout
    result = json.loads(out.read_text())
    assert result["device"]["type"] == "cuda"
    precisions = ["fp32", "bf16"] if result["device"]["bf16"] else ["fp32"]
    assert sorted(result["runs"]) == sorted(precisions)
    for q in precisions:
        run, peak = result["runs"][q], result["peaks"][q]["best"]
        assert run["precision"] == q and run["tokens_per_s"] > 0
        assert run["mfu"] == pytest.approx(run["tokens_per_s"] * run["flops_per_token"] / peak)
        assert 0 < run["mfu"] < 1  # a fraction of the measured peak
    if "bf16" in precisions:  # tensor cores: a 4096 x 4096 bf16 matmul outruns fp32 (TF32 off) by far
        assert result["peaks"]["bf16"]["best"] > 2 * result["peaks"]["fp32"]["best"]
