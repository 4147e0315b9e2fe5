"""Sharded data parallelism: FSDP2 (torch's ``fully_shard``) and DeepSpeed ZeRO-3, behind one small interface.

DDP keeps a whole copy of the weights, gradients and optimizer state in every process; sharding splits
them over the processes, so a model whose training state does not fit one device can still train. The
trainer asks an *engine* (chosen once, by ``engine()``) for the few things sharding changes:

- ``shard``/``prepare``: wrap the model (each transformer block, then the root) and the optimizer;
- ``no_sync`` and ``clip_grad_norm``: gradient accumulation and clipping over sharded gradients;
- ``gathered``: a context in which every process holds the full weights, so that evaluation, prediction
  and generation call the heads and the backbone as on one process (each process still takes its own
  batches, so they need not run the same number of forward passes);
- ``full_state_dict``: the full weights on the main process (CPU), for ``best/`` and the final model,
  which stay ordinary safetensors checkpoints;
- sharded step checkpoints through ``torch.distributed.checkpoint`` (DCP): each process writes its shard
  of the weights and optimizer state, nothing is gathered in one process, and the checkpoint loads on any
  number of processes (DCP reshards) or in one process without torch.distributed (``read_model_tensors``).

On CPU Accelerate never applies its FSDP plugin (it falls back to plain data parallelism), so nlpkit calls
``fully_shard`` itself under torchrun, with gloo; that is how all of this is tested. With an Accelerate FSDP
config on GPUs (``fsdp_version: 2``) Accelerate shards the model in ``prepare`` and the same engine serves it.
See docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..sdk.errors import CheckpointError, ConfigError

#: the folder of a step checkpoint that holds the DCP shards of the weights and the optimizer state
SHARDED_DIR = "sharded"
#: the same for DeepSpeed ZeRO-3 (its own checkpoint format); the weights are also gathered into safetensors
DEEPSPEED_DIR = "deepspeed"


# ---- which engine ----------------------------------------------------------------------------------
def requested(configured: str) -> str:
    """The sharding asked for: ``distributed.sharding``, else what an ``accelerate launch`` config set."""
    if configured != "none":
        return configured
    env = os.environ
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if env.get("FSDP_VERSION", "1") != "2":
            raise ConfigError("the Accelerate config asks for FSDP version 1; nlpkit shards with FSDP2 (torch's "
                              "fully_shard): set fsdp_version: 2 in its fsdp_config (recipes/distributed/fsdp.yaml)")
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "zero3"
    return "none"


def check_zero3(cuda: bool) -> None:
    """ZeRO-3 runs only where DeepSpeed can: CUDA GPUs and the deepspeed package. Said before anything starts."""
    import importlib.util

    if not cuda:
        raise ConfigError("DeepSpeed ZeRO-3 needs CUDA GPUs, and this machine has none (or trainer.cpu is set). "
                          "To shard on CPU use distributed.sharding=fsdp (torch FSDP2 over gloo) under torchrun; "
                          "see docs/distributed.md")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("DeepSpeed ZeRO-3 needs the deepspeed package, which is not installed: "
                          "pip install deepspeed (or shard with distributed.sharding=fsdp)")


def deepspeed_plugin(max_grad_norm: float | None) -> Any:
    """Accelerate's DeepSpeed plugin for ``distributed.sharding=zero3`` (no Accelerate config needed).

    ``zero3_save_16bit_model`` makes ``get_state_dict`` gather the full weights for ``best/``; accumulation
    stays 1 because DeepSpeed steps inside ``backward`` (see ``distributed.check_engine``)."""
    from accelerate.utils import DeepSpeedPlugin

    return DeepSpeedPlugin(zero_stage=3, zero3_save_16bit_model=True, gradient_accumulation_steps=1,
                           gradient_clipping=float(max_grad_norm or 0.0), zero3_init_flag=False)


def engine(name: str, acc: Any) -> "Unsharded":
    """The engine for ``name`` ("none", "fsdp" or "zero3") on this accelerator."""
    if name == "none" or acc.num_processes == 1 and name == "fsdp":
        return Unsharded(acc)
    if name == "fsdp":
        return Fsdp(acc)
    return Zero3(acc)


# ---- the engines -----------------------------------------------------------------------------------
class Unsharded:
    """One process or DDP: every process holds everything; Accelerate does all of it."""

    name = "none"
    #: step checkpoints are written by every process (each its shard), not by the main process alone
    sharded_checkpoints = False
    #: the weights of a step checkpoint are in those shards (else also gathered into model.safetensors)
    weights_in_shards = False

    def __init__(self, acc: Any):
        self.acc = acc

    def shard(self, model: nn.Module) -> nn.Module:
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[Any, Any]:
        return self.acc.prepare(model, optimizer)

    def no_sync(self, model: Any, sync: bool):
        return contextlib.nullcontext() if sync or self.acc.num_processes == 1 else self.acc.no_sync(model)

    def clip_grad_norm(self, model: Any, max_norm: float) -> float:
        norm = self.acc.clip_grad_norm_(model.parameters(), max_norm)
        return float(norm) if norm is not None else 0.0  # DeepSpeed (ZeRO-2) clips in its step, reports nothing here

    def gathered(self, model: Any):
        return contextlib.nullcontext()

    def full_state_dict(self, model: Any) -> dict[str, torch.Tensor] | None:
        """None: the model is whole in every process; save it directly."""
        return None

    def describe(self, model: Any) -> str | None:
        return None

    def check_resume(self, src: Path) -> None:
        """Refuse, before anything is written, a step checkpoint this engine cannot continue."""
        if (Path(src) / DEEPSPEED_DIR).is_dir():
            raise ConfigError(f"{src} was written by DeepSpeed ZeRO-3; resume it with distributed.sharding=zero3")

    def save_sharded(self, tmp: Path, model: Any, optimizer: Any, frozen_too: bool) -> None:
        """Every process writes its part of a step checkpoint into the folder ``tmp`` (before the main process
        adds the rest and renames it into place)."""
        raise NotImplementedError

    def load_optimizer(self, folder: Path, model: Any, optimizer: Any) -> None:
        load_optimizer(folder, model, optimizer)


class Fsdp(Unsharded):
    """FSDP2: each transformer block is one unit of all-gather / reduce-scatter, the rest (embeddings, heads)
    is the root's unit. Parameters, gradients and AdamW state are sharded over the processes."""

    name = "fsdp"
    sharded_checkpoints = True
    weights_in_shards = True

    def __init__(self, acc: Any):
        super().__init__(acc)
        self.by_accelerate = str(acc.distributed_type).endswith("FSDP")  # its FSDP plugin (GPU) shards in prepare()
        self.units = 0

    def shard(self, model: nn.Module) -> nn.Module:
        acc = self.acc
        if self.by_accelerate:
            return model
        import torch.distributed as dist
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(acc.device)
        with torch.no_grad():  # the same starting weights everywhere, as DDP guarantees by broadcasting
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)
        policy = MixedPrecisionPolicy()
        if acc.device.type == "cuda" and acc.mixed_precision == "bf16":  # bf16 compute and all-gathers, fp32 shards
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        units = blocks(model)
        for block in units:
            fully_shard(block, mp_policy=policy, reshard_after_forward=True)
        fully_shard(model, mp_policy=policy, reshard_after_forward=False)  # the root is used again at once
        self.units = len(units) + 1
        return model

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[Any, Any]:
        if self.by_accelerate:
            return self.acc.prepare(model, optimizer)
        return model, self.acc.prepare(optimizer)  # not prepare(model): that would wrap it in DDP as well

    def no_sync(self, model: Any, sync: bool):
        return _gradient_sync(model, sync)

    def clip_grad_norm(self, model: Any, max_norm: float) -> float:
        """The norm of the whole (sharded) gradient: each process's partial sums are all-reduced."""
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
        if hasattr(total, "full_tensor"):
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return float(total)

    def gathered(self, model: Any):
        return _unsharded(model)

    def full_state_dict(self, model: Any) -> dict[str, torch.Tensor]:
        """Every process calls it (a collective); the main process gets the full weights on CPU, the others {}."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def check_resume(self, src: Path) -> None:
        if not is_sharded(src):
            raise ConfigError(f"cannot resume from {src} with distributed.sharding=fsdp: it was written without "
                              "sharding (its optimizer state is one file in the order of unsharded parameters). Resume "
                              "it with distributed.sharding=none, or start over with --resume never")

    def describe(self, model: Any) -> str:
        world = self.acc.num_processes
        local, full = _param_bytes(model)
        who = "Accelerate's FSDP plugin" if self.by_accelerate else f"fully_shard on {self.units} units (blocks + root)"
        return (f"sharding: FSDP2 ({who}) over {world} processes: this process holds {local / 2**20:,.1f} MB "
                f"of the {full / 2**20:,.1f} MB of parameters; gradients and optimizer state are sharded alike")

    def save_sharded(self, tmp: Path, model: Any, optimizer: Any, frozen_too: bool) -> None:
        """Every process writes its own shard of the weights and optimizer state (DCP); nothing is gathered.
        ``frozen_too``: False for an adapter-only run, whose frozen base is reloaded from its source."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(ignore_frozen_params=not frozen_too)
        weights, optim = get_state_dict(model, _torch_optimizer(optimizer), options=options)
        dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=str(tmp / SHARDED_DIR))


class Zero3(Unsharded):
    """DeepSpeed ZeRO-3 through Accelerate (CUDA only). Not run here: this project's machines have no GPU."""

    name = "zero3"
    sharded_checkpoints = True

    def gathered(self, model: Any):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)

    def no_sync(self, model: Any, sync: bool):
        return contextlib.nullcontext()

    def full_state_dict(self, model: Any) -> dict[str, torch.Tensor]:
        """A collective: with zero3_save_16bit_model, Accelerate gathers the full weights on the main process."""
        return self.acc.get_state_dict(model)

    def check_resume(self, src: Path) -> None:
        if not (Path(src) / DEEPSPEED_DIR).is_dir():
            raise ConfigError(f"cannot resume from {src} with DeepSpeed ZeRO-3: it was not written by ZeRO-3 (no "
                              f"{DEEPSPEED_DIR}/); resume it with the distributed.sharding it was trained with")

    def describe(self, model: Any) -> str:
        return (f"sharding: DeepSpeed ZeRO-3 over {self.acc.num_processes} processes (parameters, gradients and "
                "optimizer state)")

    def save_sharded(self, tmp: Path, model: Any, optimizer: Any, frozen_too: bool) -> None:
        model.save_checkpoint(str(tmp / DEEPSPEED_DIR), tag="zero3")  # the DeepSpeed engine: each its partition

    def load_optimizer(self, folder: Path, model: Any, optimizer: Any) -> None:
        if not (Path(folder) / DEEPSPEED_DIR).is_dir():
            raise CheckpointError(f"{folder} was not written by DeepSpeed ZeRO-3 (no {DEEPSPEED_DIR}/): resume it "
                                  "with the distributed.sharding it was trained with")
        model.load_checkpoint(str(Path(folder) / DEEPSPEED_DIR), tag="zero3", load_optimizer_states=True,
                              load_lr_scheduler_states=False, load_module_strict=False)


# ---- FSDP2 pieces ----------------------------------------------------------------------------------
def blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's transformer blocks, each to be sharded as one unit: the entries of its ModuleLists of
    layers (the classes transformers names in ``_no_split_modules``, e.g. LlamaDecoderLayer, T5Block; or,
    where it names none, any ModuleList of same-class modules with weights). Embeddings stay in the root's
    unit even where ``_no_split_modules`` names them: a head may tie its weights to them (masked-LM, LM
    heads), and tied weights must live in one unit. A block inside a block is part of it."""
    hf = model.backbone.model
    names = set(getattr(hf, "_no_split_modules", None) or ())
    found = []
    for m in hf.modules():
        if isinstance(m, nn.ModuleList) and m and any(True for _ in m[0].parameters()):
            same = len({type(x) for x in m}) == 1
            if names and all(type(x).__name__ in names for x in m) or not names and same and len(m) > 1:
                found.extend(m)
    inner = {id(x) for m in found for x in m.modules() if x is not m}
    return [m for m in found if id(m) not in inner]


@contextlib.contextmanager
def _unsharded(model: Any) -> Iterator[None]:
    """Every FSDP unit all-gathered once and kept so: forward passes then need no collective, so each process
    can run its own number of batches, and generation its own number of steps. Costs the full weights in each
    process for the duration (gradients and optimizer state stay sharded)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    # the root must be the first to initialise (normally its forward does it); evaluation before the first
    # training step calls blocks directly, which would otherwise each take themselves for the root
    model._get_fsdp_state()._lazy_init()
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    # transformers' generate() sees this flag and makes the processes decode in lock-step (an all-reduce per
    # token); with the weights gathered each process decodes its own batches, and lock-step would hang
    managed = [m for m in model.modules() if getattr(m, "_is_fsdp_managed_module", False)]
    for m in managed:
        m._is_fsdp_managed_module = False
    try:
        yield
    finally:
        for m in managed:
            m._is_fsdp_managed_module = True
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)


@contextlib.contextmanager
def _gradient_sync(model: Any, sync: bool) -> Iterator[None]:
    """Without sync (an accumulation micro-batch that is not the last), gradients accumulate unreduced."""
    if sync:
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _param_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of parameters this process holds, bytes of all parameters)."""
    params = list(model.parameters())
    local = sum(_local(p).numel() * p.element_size() for p in params)
    return local, sum(p.numel() * p.element_size() for p in params)


def local_bytes(model: nn.Module, optimizer: Any) -> dict[str, int]:
    """Parameter, gradient and optimizer-state bytes this process holds (DTensors count their local shard)."""
    opt = _torch_optimizer(optimizer)
    states = [o.state for o in getattr(opt, "inner", {}).values()] or [opt.state]  # PerTaskAdamW: one per task
    state = sum(_local(v).numel() * v.element_size() for st in states for s in st.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)
    grads = sum(_local(p.grad).numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {"param_bytes": _param_bytes(model)[0], "grad_bytes": grads, "optimizer_state_bytes": state}


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it


# ---- sharded checkpoints (DCP), read without unpickling arbitrary objects --------------------------
def is_sharded(folder: str | Path) -> bool:
    return (Path(folder) / SHARDED_DIR / ".metadata").is_file()


#: what a DCP .metadata pickle may name (besides torch dtypes); anything else is refused, so a tampered
#: index cannot run code when a checkpoint is loaded
_SAFE_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS or module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


def _reader(folder: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        """DCP's reader with the .metadata pickle read by an unpickler that only builds DCP's own records."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = Path(self.path) / ".metadata"
            try:
                metadata = _SafeUnpickler(io.BytesIO(path.read_bytes())).load()
            except (pickle.UnpicklingError, EOFError, OSError, AttributeError, ValueError) as exc:
                raise CheckpointError(f"{path}: not a readable sharded-checkpoint index ({exc}): the file is damaged") from exc
            from torch.distributed.checkpoint.metadata import StorageMeta

            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(folder))


def read_model_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """The full weights of a sharded checkpoint, in this process alone (no process group needed, whatever the
    number of processes that wrote it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(folder) / SHARDED_DIR
    reader = _reader(path)
    metadata = reader.read_metadata()
    wanted = {key[len("model."):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
              for key, m in metadata.state_dict_metadata.items()
              if key.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": wanted}, storage_reader=_reader(path), no_dist=True)
    except Exception as exc:  # noqa: BLE001 - a missing or truncated shard file: name the folder
        raise CheckpointError(f"{path}: cannot read the sharded weights ({type(exc).__name__}: {str(exc)[:200]}); "
                              "a shard file is missing or damaged") from exc
    return wanted


def load_optimizer(folder: str | Path, model: Any, optimizer: Any) -> None:
    """The optimizer state of a sharded checkpoint into this run's optimizer, sharded or not, on any number of
    processes: DCP reads the pieces each process needs (resharding)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)

    if not is_sharded(folder):
        raise CheckpointError(f"{folder} holds no sharded optimizer state ({SHARDED_DIR}/.metadata); a ZeRO-3 "
                              "checkpoint resumes only with distributed.sharding=zero3")
    opt = _torch_optimizer(optimizer)
    state = get_optimizer_state_dict(model, opt)
    path = Path(folder) / SHARDED_DIR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"optimizer": state}, storage_reader=_reader(path), no_dist=not dist.is_initialized())
    # parameters that never had a gradient (an unused pooler) have no saved state: that is not an error
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(strict=False))
