"""Several processes on CPU (gloo) must train and evaluate exactly like one process with the same global batch.

Why the comparison can be tight: with dropout off, the two runs compute the same function. Each process
takes its slice of the same global batch and DDP averages the processes' gradients, so the 2-process
gradient equals the 1-process one WHEN every process's loss averages over the same number of items;
the NER loss averages over the words of the slice, so the training sentences here all have 8 words
(with ragged sentences the mean of per-process means is not the global mean, and the runs drift apart
by design, not by bug). What is left is float32 rounding in a different summation order (an all-reduce
of two half-batch gradients, other padding lengths): measured at <= 3e-7 relative over 30 steps, so
1e-4 leaves a wide margin while a process training on the wrong slice, missing gradient
synchronisation or rank 0 logging only its own loss all show up at 1e-2 or more from the first steps.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import nlpkit
from nlpkit.apps.cli import main
from nlpkit.sdk.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "distributed"
STEPS, BATCH, EVAL_BATCH, N_DEV = 30, 16, 8, 37

PER = ["Anna", "Sven", "Maria", "Kofi", "Lena", "Ravi", "Yuki", "Omar"]
LOC = ["Lisbon", "Oslo", "Lagos", "Lima", "Hanoi", "Quito"]
ORG = ["Acme", "Globex", "Initech", "Umbrella"]
WORDS = ["the", "met", "in", "visited", "said", "with", "from", "at", "today", "a", "new", "office", "report"]


def _sentence(rng: random.Random, n: int) -> str:
    words, tags = [], []
    while len(words) < n:
        r = rng.random()
        if r < 0.15:
            words.append(rng.choice(PER)), tags.append("B-PER")
        elif r < 0.25:
            words.append(rng.choice(LOC)), tags.append("B-LOC")
        elif r < 0.32 and len(words) < n - 1:
            words += [rng.choice(ORG), "Corp"]
            tags += ["B-ORG", "I-ORG"]
        else:
            words.append(rng.choice(WORDS)), tags.append("O")
    return "\n".join(f"{w} {t}" for w, t in zip(words, tags))


def write_ner_files(folder: Path) -> Path:
    """96 training sentences of exactly 8 words (6 full batches of 16); 37 dev sentences of 3-12 words:
    37 is divisible neither by 2 processes nor by the evaluation batch of 8 (batches 8+8+8+8+5, split 3/2).
    tests/test_sharding.py trains on the same files."""
    rng = random.Random(0)
    (folder / "train.conll").write_text("\n\n".join(_sentence(rng, 8) for _ in range(96)) + "\n")
    (folder / "dev.conll").write_text("\n\n".join(_sentence(rng, rng.randint(3, 12)) for _ in range(N_DEV)) + "\n")
    return folder


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> Path:
    return write_ner_files(tmp_path_factory.mktemp("ner-dist"))


def _train_args(files: Path, out: Path) -> list[str]:
    return ["train", "--task", "ner", "--data", f"train={files / 'train.conll'}", "--data", f"dev={files / 'dev.conll'}",
            "--backbone", "mini", "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--no-progress",
            "--output-dir", str(out), "--option", "dropout=0", "--set", "backbone.dropout=0",
            "--set", "backbone.vocab_size=300", "--set", "logging.log_every=1", "--set", "trainer.eval_every=10",
            "--set", f"trainer.eval_batch_size={EVAL_BATCH}"]


@pytest.fixture(scope="module")
def runs(ner_files, tmp_path_factory) -> dict:
    """`nlpkit train --num-processes 2` (the CLI re-executes itself through torchrun: 2 gloo processes),
    started in the background while the same training runs in this process."""
    folder = tmp_path_factory.mktemp("dist")
    two = subprocess.Popen([sys.executable, "-m", "nlpkit", *_train_args(ner_files, folder / "two"),
                            "--num-processes", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each torchrun process; on a busy 2-core machine 2 threads ran 8x slower
    try:
        assert main(_train_args(ner_files, folder / "one")) == 0
    finally:
        torch.set_num_threads(threads)
    stdout, stderr = two.communicate(timeout=300)
    assert two.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return {"two": folder / "two", "one": folder / "one", "two_stdout": stdout}


@pytest.fixture(scope="module")
def two_process_run(runs) -> tuple[Path, str]:
    return runs["two"], runs["two_stdout"]


@pytest.fixture(scope="module")
def one_process_run(runs) -> Path:
    return runs["one"]


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss/ner"] for r in records if "loss/ner" in r]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


# ---- the 2-process CPU run -------------------------------------------------------------------------
def test_two_processes_really_ran(two_process_run, one_process_run):
    run, stdout = two_process_run
    assert _metrics(run)["processes"] == 2  # accelerate launch --cpu silently gives 1: always check
    assert _metrics(one_process_run)["processes"] == 1
    assert "distributed: 2 processes (MULTI_CPU, backend gloo)" in stdout


def test_loss_curve_matches_single_process_with_same_global_batch(two_process_run, one_process_run):
    two, one = _losses(two_process_run[0]), _losses(one_process_run)
    assert len(two) == len(one) == STEPS
    assert two == pytest.approx(one, rel=1e-4)
    assert sum(one[-10:]) < sum(one[:10])  # it learned something: the match is not between two flat lines


def test_samples_and_tokens_count_every_process(two_process_run, one_process_run):
    two, one = _metrics(two_process_run[0]), _metrics(one_process_run)
    assert two["train_samples"] == one["train_samples"] == STEPS * BATCH
    assert two["train_tokens"] == one["train_tokens"] > STEPS * BATCH * 8  # real tokens of all processes


def test_two_process_evaluation_scores_every_dev_sentence_once(two_process_run, ner_files):
    """The dev scores computed by 2 processes (3 and 2 batches, gathered) equal a 1-process evaluation of
    the same saved weights: a lost or duplicated sentence would change accuracy and the entity counts."""
    run = two_process_run[0]
    distributed = _metrics(run)["tasks"]["ner"]
    single = nlpkit.load(run).evaluate(str(ner_files / "dev.conll"), batch_size=EVAL_BATCH)
    assert distributed == single
    gold_entities = sum(line.split()[-1].startswith("B-") for line in (ner_files / "dev.conll").read_text().splitlines()
                        if line.strip())
    assert sum(t["support"] for t in single["per_type"].values()) == gold_entities


def test_sigterm_to_a_two_process_run_saves_one_checkpoint_and_exits_143(ner_files, tmp_path):
    """torchrun passes SIGTERM on to both processes; they agree on the step, write one checkpoint
    together, one of them says how to resume, and the launcher exits 143 without a traceback."""
    import signal
    import time

    from nlpkit.engine import checkpoint

    out = tmp_path / "run"
    args = _train_args(ner_files, out)
    args[args.index("--max-steps") + 1] = "100000"  # far from done when the signal comes
    proc = subprocess.Popen([sys.executable, "-m", "nlpkit", *args, "--num-processes", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:  # wait for a few real steps
            log = out / "log.jsonl"
            if log.exists() and sum('"loss/ner"' in line for line in log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.count("nlpkit: interrupted by SIGTERM at step ") == 1, stderr[-3000:]
    latest = checkpoint.latest_training(out)
    assert latest is not None and f"Resume with: nlpkit train --resume {out}" in stderr
    state = checkpoint.read_training_state(latest)
    assert state["world_size"] == 2 and state["stop_reason"] == "interrupted by SIGTERM" and state["step"] >= 3


def test_uneven_split_gathers_every_feature_exactly_once(tmp_path):
    """Through `accelerate launch --multi_gpu` (which starts the processes with torchrun; on a machine
    without GPUs nlpkit's Accelerator runs them on CPU with gloo): 37 features in batches of 8."""
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(ROOT / "tests" / "distributed_worker.py"), str(N_DEV), str(EVAL_BATCH), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2
    assert sorted(result["ran_per_process"]) == [16, 21]  # batches 8+8+5 and 8+8: uneven on purpose
    assert result["outputs"] == list(range(N_DEV))  # each feature once, back in feature order


# ---- launch checks ---------------------------------------------------------------------------------
ACCELERATE_SIMPLE_LAUNCHER = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
LAUNCHER_VARS = ["WORLD_SIZE", "LOCAL_RANK", "RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                 "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND"]


@pytest.fixture
def clean_env(monkeypatch):
    for key in LAUNCHER_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_accelerate_launch_that_started_one_of_several_processes_is_refused(clean_env):
    from nlpkit.engine.distributed import check_launch

    check_launch()  # plain `nlpkit train`
    for key, value in ACCELERATE_SIMPLE_LAUNCHER.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError, match="--multi_gpu"):
        check_launch()
    clean_env.setenv("WORLD_SIZE", "2")  # what torchrun / accelerate launch --multi_gpu add
    clean_env.setenv("LOCAL_RANK", "0")
    check_launch()


def test_num_processes_flag(clean_env, capsys):
    from nlpkit.engine.distributed import need_relaunch

    assert need_relaunch(None) is False
    assert need_relaunch(1) is False
    assert need_relaunch(2) is True
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("LOCAL_RANK", "0")
    assert need_relaunch(2) is False  # inside the processes torchrun started
    assert main(["train", "--task", "ner", "--num-processes", "4", "--max-steps", "1"]) == 2
    assert "the launcher started 2 processes" in capsys.readouterr().err


def test_num_processes_runs_torchrun_and_passes_on_a_process_error(monkeypatch, capsys):
    """The real failure path (missing data file, 2 processes) ends in the same way: both processes print
    `nlpkit: error: ...: file not found`, then this line, exit status 2 and no traceback."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from nlpkit.engine.distributed import relaunch

    calls = []

    def fake_run(args):
        calls.append(args)
        raise ChildFailedError("nlpkit", {1: ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file="")})

    monkeypatch.setattr(torchrun, "run", fake_run)
    assert relaunch(["train", "--task", "ner", "--num-processes", "2"], 2) == 2
    (args,) = calls
    assert args.standalone and args.nproc_per_node == "2" and args.module
    assert [args.training_script, *args.training_script_args] == ["nlpkit", "train", "--task", "ner",
                                                                  "--num-processes", "2"]
    assert "process 1 of 2 failed first (exit status 2)" in capsys.readouterr().err


# ---- precision "auto" ------------------------------------------------------------------------------
@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of a given compute capability, for the capability checks only."""

    def install(major: int | None):
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: major is not None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
        # torch's own check says yes on 7.x too (bf16 emulation): auto_precision must not rely on it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(torch.version, "hip", None)

    return install


@pytest.mark.parametrize("major,expected", [(None, "no"), (6, "fp16"), (7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_precision_bf16_only_on_gpus_with_bf16_units(fake_gpu, major, expected):
    from nlpkit.engine.precision import auto_precision

    fake_gpu(major)
    assert auto_precision() == expected
    assert auto_precision(cpu=True) == "no"


def test_auto_precision_honours_accelerate_launch(fake_gpu, monkeypatch):
    from nlpkit.engine.precision import auto_precision

    fake_gpu(9)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert auto_precision() == "fp16"
    with pytest.raises(ConfigError, match="needs a GPU"):  # Accelerate has no fp16 on CPU
        auto_precision(cpu=True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert auto_precision(cpu=True) == "bf16"


def test_trainer_gives_accelerate_the_auto_precision_and_the_gpu(fake_gpu, monkeypatch, tmp_path):
    """Accelerator(mixed_precision="fp16") on CUDA is what adds the GradScaler (loss scaling)."""
    import accelerate

    from nlpkit.engine.config import RunConfig
    from nlpkit.engine.trainer import Trainer

    seen = {}
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kwargs: seen.update(kwargs) or SimpleNamespace(**kwargs))
    config = RunConfig.from_dict({"tasks": [{"type": "ner"}], "output_dir": str(tmp_path)})
    fake_gpu(7)
    Trainer(config)._accelerator()
    assert seen["mixed_precision"] == "fp16" and seen["cpu"] is False
    fake_gpu(8)
    Trainer(config)._accelerator()
    assert seen["mixed_precision"] == "bf16" and seen["cpu"] is False
    fake_gpu(None)
    Trainer(config)._accelerator()
    assert seen["mixed_precision"] == "no" and seen["cpu"] is True  # gloo under torchrun


# ---- Accelerate config files (dry run: no GPU, no DeepSpeed) -------------------------------------
EXPECTED = {
    "multi_gpu.yaml": ("MULTI_GPU", {}),
    "multi_node.yaml": ("MULTI_GPU", {"ACCELERATE_MIXED_PRECISION": "no"}),
    "fsdp.yaml": ("FSDP", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
                           "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_ACTIVATION_CHECKPOINTING": "true",
                           "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP": "BertLayer",
                           "ACCELERATE_MIXED_PRECISION": "bf16"}),
    "deepspeed_zero2.yaml": ("DEEPSPEED", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                                           "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"}),
    "deepspeed_zero3.yaml": ("DEEPSPEED", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                                           "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}),
}


def _launch_env(path: Path, monkeypatch) -> tuple[SimpleNamespace, dict[str, str]]:
    """What `accelerate launch --config_file PATH -m nlpkit train` would give its processes, without launching."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as launch_utils

    monkeypatch.setattr(launch_utils, "is_port_in_use", lambda port: False)
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "nlpkit", "train", "--task", "ner"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = launch_utils.prepare_deepspeed_cmd_env(args)
    else:
        env = launch_utils.prepare_multi_gpu_env(args)
    return args, env


def test_every_recipe_is_covered():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_parses(name, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = RECIPES / name
    config = load_config_from_file(str(path))  # Accelerate's own loader: unknown top-level keys fail here
    kind, expected_env = EXPECTED[name]
    assert str(config.distributed_type).split(".")[-1] == kind
    # Accelerate copies nested keys onto its launch arguments without checking them: a typo would be ignored
    known = vars(launch_command_parser().parse_args(["x.py"]))
    for section in ("fsdp_config", "deepspeed_config"):
        for key in getattr(config, section):
            assert key in known, f"{name}: {section}.{key} is not an accelerate launch option"
    args, env = _launch_env(path, monkeypatch)
    assert {k: env.get(k) for k in expected_env} == expected_env
    if name == "multi_node.yaml":
        assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 0, "8")
        assert args.rdzv_endpoint == "10.0.0.1:29500"


@pytest.mark.parametrize("name", ["fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_builds_the_engine_and_nlpkit_fits_it_to_its_loop(name, monkeypatch):
    """Accelerate's plugins are built from the launch environment (DeepSpeed need not be installed for
    this). nlpkit reads which sharding the launch asks for (FSDP2 or ZeRO-3; ZeRO-2 is not sharding of the
    weights), and for DeepSpeed fills the batch size and clipping and has ZeRO-3 gather weights on save."""
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    from nlpkit.engine.distributed import check_engine
    from nlpkit.engine.sharding import requested

    _, env = _launch_env(RECIPES / name, monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if name == "fsdp.yaml":
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.activation_checkpointing
        assert plugin.transformer_cls_names_to_wrap == ["BertLayer"]
        assert requested("none") == "fsdp"
        check_engine(SimpleNamespace(distributed_type="DistributedType.FSDP", num_processes=8), 32, 1, 1.0)
        return
    plugin = DeepSpeedPlugin()
    acc = SimpleNamespace(distributed_type="DistributedType.DEEPSPEED", num_processes=8,
                          state=SimpleNamespace(deepspeed_plugin=plugin))
    assert requested("none") == ("zero3" if plugin.zero_stage == 3 else "none")
    with pytest.raises(ConfigError, match="grad_accum"):
        check_engine(acc, 32, 2, 1.0)
    check_engine(acc, 32, 1, 1.0)
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 4  # global batch 32 over 8 processes
    assert plugin.deepspeed_config["gradient_clipping"] == 1.0
    if plugin.zero_stage == 3:  # best/ needs the full weights gathered on the main process
        assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_plain_ddp_is_accepted():
    """DDP (and FSDP, CPU, one process) keep nlpkit's own gradient accumulation: check_engine leaves their
    Accelerator alone. The same settings on DeepSpeed are refused, and on ZeRO-3 the config is filled in."""
    from nlpkit.engine.distributed import check_engine

    def accelerator(kind: str) -> SimpleNamespace:
        plugin = SimpleNamespace(zero_stage=3, deepspeed_config={"gradient_accumulation_steps": "auto"})
        return SimpleNamespace(distributed_type=f"DistributedType.{kind}", num_processes=2,
                               state=SimpleNamespace(deepspeed_plugin=plugin))

    for kind in ("MULTI_GPU", "MULTI_CPU", "FSDP", "NO"):
        acc = accelerator(kind)
        assert check_engine(acc, 32, 4, 1.0) is None
        # nothing read or written: a DeepSpeed config that happens to be there stays as it was
        assert acc.state.deepspeed_plugin.deepspeed_config == {"gradient_accumulation_steps": "auto"}, kind

    deepspeed = accelerator("DEEPSPEED")
    with pytest.raises(ConfigError, match="grad_accum=1"):  # accumulation 4 is what DDP just accepted
        check_engine(deepspeed, 32, 4, 1.0)
    assert check_engine(deepspeed, 32, 1, 0.5) is None
    assert deepspeed.state.deepspeed_plugin.deepspeed_config == {
        "gradient_accumulation_steps": "auto", "train_micro_batch_size_per_gpu": 16, "gradient_clipping": 0.5,
        "zero_optimization": {"stage3_gather_16bit_weights_on_model_save": True}}


# ---- dropout, for runs that must be deterministic given the data order ----------------------------
def test_set_dropout_reaches_layers_float_attributes_and_config():
    from transformers import T5Config, T5Model

    from nlpkit.engine.backbone import PRESETS, Backbone, train_tokenizer

    tokenizer = train_tokenizer(["a small text to train a tokenizer on"] * 4, 300)
    preset = {k: v for k, v in PRESETS["mini"].items() if k != "vocab_size"}
    bert = Backbone.from_scratch(preset, tokenizer, "mini")
    t5 = Backbone(T5Model(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)), tokenizer, "t5")
    for backbone in (bert, t5):
        assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in backbone.modules())
        backbone.set_dropout(0.0)
        assert all(m.p == 0.0 for m in backbone.modules() if isinstance(m, torch.nn.Dropout))
        floats = [v for m in backbone.modules() for k, v in vars(m).items() if "dropout" in k and isinstance(v, float)]
        assert all(v == 0.0 for v in floats)
    assert t5.model.encoder.block[0].layer[0].SelfAttention.dropout == 0.0  # T5 attention keeps a float
    assert bert.model.config.hidden_dropout_prob == bert.model.config.attention_probs_dropout_prob == 0.0
    assert t5.model.config.dropout_rate == 0.0


def test_backbone_dropout_is_validated(tmp_path):
    from nlpkit.engine.config import RunConfig

    with pytest.raises(ConfigError, match="backbone.dropout"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "backbone": {"dropout": 1.5}})


def test_lora_under_two_processes_matches_one_process(ner_files, tmp_path):
    """DDP with a frozen base: only the adapters and the head are synchronised, and the losses are those of one
    process with the same global batch."""
    def args(out: Path) -> list[str]:
        lora = ["--peft", "lora", "--max-steps", "6", "--set", "trainer.eval_every=6"]
        return [*_train_args(ner_files, out), *lora]

    two = subprocess.run([sys.executable, "-m", "nlpkit", *args(tmp_path / "two"), "--num-processes", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args(tmp_path / "one")) == 0
    finally:
        torch.set_num_threads(threads)
    assert _metrics(tmp_path / "two")["processes"] == 2
    assert "peft: lora" in two.stdout
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)


@pytest.mark.parametrize("major,hip,expected", [(7, None, "fp32"), (8, None, "bf16"), (9, None, "bf16"), (7, "6.0", "bf16")])
def test_inference_auto_reads_the_same_rule_as_training(fake_gpu, monkeypatch, major, hip, expected):
    """One rule for both "auto"s: where training picks bf16, so does inference; where training falls back to fp16
    (a GPU without bf16 units), inference keeps fp32."""
    from nlpkit.engine.precision import auto_precision, resolve

    fake_gpu(major)
    monkeypatch.setattr(torch.version, "hip", hip)
    chosen, why = resolve("auto", torch.device("cuda", 0))
    assert chosen == expected
    assert auto_precision() == ("bf16" if expected == "bf16" else "fp16")
    assert why.startswith("auto: ") and ("ROCm" in why if hip else f"capability {major}.0" in why)
    assert resolve("bf16", torch.device("cuda", 0)) == ("bf16", "asked for")
