"""Running on several processes: the pieces around Accelerate that the trainer and the CLI share.

nlpkit never builds its own distributed scheme: processes are started by ``torchrun`` or
``accelerate launch`` (or by ``nlpkit train --num-processes N``, which calls torchrun), and
Accelerate sets up torch.distributed (gloo on CPU, NCCL on GPUs), DDP, FSDP or DeepSpeed.
What lives here is what Accelerate leaves to the training loop (precision: nlpkit.engine.precision):

- one all-reduce per micro-batch that tells every process whether any loss was non-finite and gives
  the loss averaged over processes and the number of real tokens of the whole global batch;
- catching the launch that silently starts one process instead of N.
See docs/distributed.md.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Sequence

from ..sdk.errors import ConfigError

#: environment variables a multi-process launcher sets in every process it starts
_LAUNCHED = ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


# ---- launch checks ---------------------------------------------------------------------------------
def launched_world_size() -> int:
    """Processes the launcher started (1 when nothing launched us)."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def check_launch() -> None:
    """Refuse the launch that asked for several processes and got one.

    ``accelerate launch --num_processes N`` without ``--multi_gpu`` on a machine without GPUs uses
    Accelerate's single-process launcher (its multi-CPU mode needs mpirun and a host file): it sets
    MASTER_ADDR/MASTER_PORT for N processes but starts one, which would then train alone, silently.
    """
    env = os.environ
    from_accelerate = "ACCELERATE_DYNAMO_BACKEND" in env and "ACCELERATE_MIXED_PRECISION" in env
    if from_accelerate and "MASTER_ADDR" in env and not any(k in env for k in _LAUNCHED):
        raise ConfigError(
            "accelerate launch asked for several processes but started only one: without --multi_gpu (or a "
            "config file) on a machine with fewer than 2 GPUs its default launcher runs a single process. "
            "Start N processes with `accelerate launch --multi_gpu --num_processes N -m nlpkit train ...` (it "
            "launches through torchrun; without GPUs nlpkit then trains on CPU with gloo), "
            "`torchrun --nproc_per_node N -m nlpkit train ...` or `nlpkit train --num-processes N ...`"
        )


def describe(acc: Any, batch_size: int) -> str:
    """One log line on how the run is spread, with a warning when a requested engine was not used."""
    kind = str(acc.distributed_type).split(".")[-1]
    backend = getattr(acc.state, "backend", None)
    world = acc.num_processes
    line = (f"distributed: {world} processes ({kind}, backend {backend}); global batch {batch_size} = "
            f"~{batch_size / world:g} per process")
    wanted = [name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
              if os.environ.get(var, "").lower() == "true"]
    if wanted and kind not in ("FSDP", "DEEPSPEED"):
        line += (f"; WARNING: {wanted[0]} was requested but Accelerate runs {kind} "
                 "(FSDP and DeepSpeed need GPUs; on CPU Accelerate falls back to plain data parallelism)")
    return line


def from_main(acc: Any, value: Any) -> Any:
    """The main process's ``value`` on every process (e.g. a run folder named after the start time)."""
    if acc.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def check_engine(acc: Any, batch_size: int, grad_accum: int, max_grad_norm: float | None) -> None:
    """Fit an Accelerate engine chosen by a config file to nlpkit's loop, or refuse it before training.

    nlpkit's loop does its own batching and gradient accumulation. Sharded weights (FSDP2, ZeRO-3) are
    gathered for evaluation and saves by nlpkit.engine.sharding; ZeRO-3 must gather 16-bit weights on save for
    best/ to hold the full model, so that is switched on here.
    """
    kind = str(acc.distributed_type).split(".")[-1]
    if kind != "DEEPSPEED":
        return
    plugin = acc.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    if int(plugin.zero_stage) == 3:
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    gas = ds.get("gradient_accumulation_steps", "auto")
    if grad_accum != 1 or gas not in ("auto", 1):
        raise ConfigError(f"with DeepSpeed keep trainer.grad_accum=1 and no gradient_accumulation_steps in the "
                          f"DeepSpeed config (got {grad_accum} and {gas}): DeepSpeed steps the optimizer inside "
                          "backward, so nlpkit's own accumulation would step on every micro-batch; raise "
                          "trainer.batch_size instead")
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        # nlpkit has no DataLoader for Accelerate to read it from; each process takes its slice
        ds["train_micro_batch_size_per_gpu"] = max(1, math.ceil(batch_size / acc.num_processes))
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = float(max_grad_norm or 0.0)


# ---- per-step statistics ---------------------------------------------------------------------------
def step_stats(acc: Any, loss: Any, batch: dict[str, Any]) -> tuple[bool, float, int]:
    """(any process non-finite, loss averaged over processes, real tokens in the whole global batch).

    One all-reduce carries all three, so every process takes the same skip decision and the logged
    loss and tokens/s describe the global batch, not rank 0's slice. The mean of the processes' losses
    is what DDP optimises (it averages the processes' gradients); it equals the loss of the global batch
    when every process's loss averages over the same number of items (tokens or examples).
    """
    import torch

    mask = batch.get("attention_mask")
    value = loss.detach().float()
    if acc.num_processes == 1:
        tokens = int(mask.sum()) if isinstance(mask, torch.Tensor) else 0
        bad = not bool(torch.isfinite(value))
        return bad, float(value), tokens
    value = value.to(acc.device)
    tokens = mask.sum() if isinstance(mask, torch.Tensor) else torch.zeros((), device=acc.device)
    finite = torch.isfinite(value)
    stats = torch.stack([(~finite).double(), torch.where(finite, value, torch.zeros_like(value)).double(),
                         tokens.to(acc.device).double()])
    stats = acc.reduce(stats, "sum").tolist()
    return stats[0] > 0, stats[1] / acc.num_processes, int(stats[2])


# ---- `nlpkit train --num-processes N` --------------------------------------------------------------
def relaunch(argv: Sequence[str], num_processes: int) -> int:
    """Run ``nlpkit <argv>`` in ``num_processes`` processes on this machine through torchrun.

    torchrun's own entry point is called in this process (it only starts and watches the children), so a
    failed child gives back its own exit status (2 for an nlpkit error, whose one-line message it has
    printed) instead of torchrun's traceback. ``--standalone`` picks a free port, so two runs on one
    machine do not collide. The children see WORLD_SIZE == num_processes and train instead of
    relaunching. On CPU each process gets an equal share of the cores unless OMP_NUM_THREADS is set
    (torchrun's own default is 1 thread).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    args = parse_args(["--standalone", f"--nproc_per_node={num_processes}", "-m", "nlpkit", *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"nlpkit: error: process {rank} of {num_processes} failed first (exit status {failure.exitcode}); "
              "its message is above", file=sys.stderr)
        return failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
    except SignalException as exc:  # SIGTERM/SIGINT to torchrun: it passed the signal on to the children,
        return 128 + int(exc.sigval)  # which saved, said how to resume, and stopped (nlpkit.engine.preemption)
    return 0


def need_relaunch(num_processes: int | None) -> bool:
    """True when ``--num-processes N`` (N > 1) must start N processes; False inside them.

    Inside a launch with another number of processes the flag contradicts the launcher: an error.
    """
    if num_processes is None:
        return False
    if num_processes < 1:
        raise ConfigError(f"--num-processes {num_processes}: must be at least 1")
    world = launched_world_size()
    launched = any(k in os.environ for k in _LAUNCHED)
    if launched:
        if world != num_processes:
            raise ConfigError(f"--num-processes {num_processes}, but the launcher started {world} processes; "
                              "drop --num-processes when using torchrun or accelerate launch")
        return False
    return num_processes > 1
