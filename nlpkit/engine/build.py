"""Building a model from what a run saved: the one place that turns a checkpoint folder into a model.

A checkpoint is a format (nlpkit.engine.checkpoint reads and writes its files and knows nothing of models); this module
puts the pieces together: the task plugins with their saved state, the backbone (from the saved architecture and
tokenizer, or, for adapter-only checkpoints, from its base loaded again and checked by fingerprint), the heads,
then every tensor matched by name and shape. Any damage is a CheckpointError naming the file.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Sequence

import torch

from ..sdk.errors import BackboneError, CheckpointError, ConfigError, NlpkitError, UnknownTaskError
from ..sdk.registry import get_task_class
from . import adapters
from .adapters import apply, quantization_config
from .backbone import Backbone, saved_tokenizer
from .checkpoint import META_FILE, WEIGHTS_FILE, read_meta, read_tensors, resolve
from .config import PeftConfig
from .model import MultiTaskModel
from .sharding import SHARDED_DIR, is_sharded


def _task_class(entry: dict[str, Any]):
    """The registered plugin, importing the module that defined it at save time if needed."""

    try:
        return get_task_class(entry["type"])
    except UnknownTaskError:
        module = entry.get("module")
        if not module:
            raise

        try:
            importlib.import_module(module)
        except ImportError:
            raise UnknownTaskError(
                f"this checkpoint needs task {entry['type']!r} from module {module!r}, which cannot be imported; "
                "install the plugin or pass --plugin MODULE") from None
        return get_task_class(entry["type"])


def load(folder: str | Path, only: Sequence[str] | None = None):
    """Rebuild (model, tasks, meta) from a checkpoint without any network access.

    This is the complete check of a checkpoint: every file is read and every tensor matched by name and
    shape, and any damage is a CheckpointError naming the file (never a traceback from a library).
    """

    folder = resolve(folder)
    meta = read_meta(folder)
    tasks = [_saved_task(entry, folder / META_FILE) for entry in meta["tasks"]]
    backbone = load_backbone(folder, weights=False)
    heads = {}
    for task in tasks:
        with _damage(folder / META_FILE, f"task {task.name!r}: its head cannot be built from the saved state"):
            task.setup(backbone)
            heads[task.name] = task.build_head(backbone)
    model = MultiTaskModel(backbone, heads)
    load_weights(model, folder)
    model.eval()
    if only:
        tasks = [t for t in tasks if t.name in only]
    return model, tasks, meta


def load_backbone(path: str | Path, weights: bool = True) -> Any:
    """The backbone of a checkpoint (architecture, tokenizer and, with ``weights``, its tensors), checked
    completely: for --init-from, call it before the run folder is touched and use what it returns."""

    folder = resolve(path)
    meta = read_meta(folder)
    saved = meta["backbone"]
    if saved.get("peft", {}).get("storage") == "adapter":  # the base from its source, then the adapters
        backbone = rebuild(folder, meta)
    else:
        backbone = Backbone.from_saved(folder, saved["spec"])
        if saved.get("peft"):
            adapters.apply(backbone, peft_config(saved["peft"]),
                           tokens=saved["peft"].get("trained_tokens", ()))
    if weights:
        load_prefixed(backbone, folder, "backbone.", base_loaded=adapters.adapter_only(backbone))
    return backbone


def _saved_task(entry: dict[str, Any], meta_path: Path) -> Any:
    """A task object with its saved options and label state (plugin code: its errors name the file)."""

    cls = _task_class(entry)
    if entry.get("version", 1) > cls.version:
        raise CheckpointError(
            f"{meta_path}: task {entry['name']!r} was saved by {entry['type']}.v{entry['version']}, "
            f"but the installed plugin is v{cls.version}; upgrade it"
        )
    try:
        task = cls(entry["name"], entry["options"])
    except ConfigError as exc:
        raise CheckpointError(f"{meta_path}: damaged: {exc}") from exc
    with _damage(meta_path, f"task {entry['name']!r}: its saved state cannot be loaded"):
        task.load_state_dict(entry["state"])
    return task


class _damage:
    """Turn what plugin or library code raises on damaged saved data into a CheckpointError naming ``path``
    (NlpkitErrors, which already say what is wrong, pass through)."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp, exc, tb) -> bool:

        if exc is None or isinstance(exc, NlpkitError) or not isinstance(exc, Exception):
            return False
        raise CheckpointError(f"{self.path}: {self.what} ({type(exc).__name__}: {str(exc)[:200]})") from exc


def load_weights(model: Any, folder: str | Path) -> None:
    """Copy a checkpoint's tensors into ``model``; every tensor must match by name and shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model


    sharded = is_sharded(folder)  # a sharded step checkpoint: its weights are DCP shards, read in this process
    path = Path(folder) / (SHARDED_DIR if sharded else WEIGHTS_FILE)
    if adapters.adapter_only(model.backbone) or sharded:  # adapter-only: the base weights are in the model already
        tensors = read_tensors(folder)
        try:
            missing, unexpected = model.load_state_dict(tensors, strict=False)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not match the model: {str(exc).strip().splitlines()[-1][:300]}") from exc
        missing = _unaliased(model, missing, set(tensors))
        if adapters.adapter_only(model.backbone):
            adapters.check_loaded(model, path, missing, unexpected)
        elif missing or unexpected:
            raise CheckpointError(f"{path} does not match the model: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}")
        return
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load the weights ({exc})") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def load_prefixed(module: Any, folder: str | Path, prefix: str, base_loaded: bool = False) -> None:
    """Load the checkpoint tensors under ``prefix`` (e.g. "backbone.") into ``module``. ``base_loaded``: the
    module holds its base weights already (a peft backbone over its reloaded base): only what it trains (the
    adapters, the added tokens' rows) must come from the checkpoint."""

    tensors = {k[len(prefix):]: v for k, v in read_tensors(folder).items() if k.startswith(prefix)}
    try:
        missing, unexpected = module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise CheckpointError(f"{resolve(folder) / WEIGHTS_FILE} does not match the model: "
                              f"{str(exc).strip().splitlines()[-1][:300]}") from exc
    missing = _unaliased(module, missing, set(tensors))
    if base_loaded:
        missing = [m for m in missing if m in adapters.trained_names(module)]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: {prefix}* does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _unaliased(module: Any, missing: Sequence[str], loaded: set[str]) -> list[str]:
    """``missing`` without the names of tied tensors that were loaded under another of their names
    (safetensors saves a tied tensor once, under whichever name it kept)."""
    aliases: dict[int, set[str]] = {}
    for name, tensor in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        aliases.setdefault(id(tensor), set()).add(name)
    loaded_ids = {i for i, names in aliases.items() if names & loaded}
    by_name = {n: i for i, names in aliases.items() for n in names}
    return [m for m in missing if by_name.get(m) not in loaded_ids]


def load_matching_heads(model: Any, folder: str | Path, tasks: Sequence[Any]) -> list[str]:
    """Copy the heads of tasks that the checkpoint has with the same name, type and label state."""
    meta = read_meta(folder)
    saved = {t["name"]: t for t in meta["tasks"]}
    tensors = read_tensors(folder)
    reused = []
    for task in tasks:
        entry = saved.get(task.name)
        if entry is None or entry["type"] != task.type_name or entry["state"] != task.state_dict():
            continue
        prefix = f"heads.{task.name}."
        head = model.heads[task.name]
        own = head.state_dict()
        picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if set(picked) != set(own) or any(picked[k].shape != own[k].shape for k in own):
            continue
        head.load_state_dict(picked)
        reused.append(task.name)
    return reused


def peft_config(saved: dict[str, Any]) -> PeftConfig:

    return PeftConfig(**{k: saved[k] for k in ("method", "r", "alpha", "dropout", "target_modules")})


# ---- loading a peft checkpoint ------------------------------------------------------------------------
def rebuild(folder: Path, meta: dict[str, Any]) -> Any:
    """The backbone of an adapter-only checkpoint: its base loaded again (and checked), the checkpoint's
    tokenizer, the embeddings sized to it, and empty adapters for the checkpoint's tensors."""

    saved = meta["backbone"]
    base = saved["base"]
    quantization = None
    if base.get("quantize"):  # QLoRA: its base fingerprint is of the quantized weights; quantize them again
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            quantization = quantization_config(base["quantize"], device)
        except ConfigError as exc:
            raise CheckpointError(
                f"{folder}: its {saved['peft']['method']} adapters were trained on {base['spec']!r} quantized to "
                f"{base['quantize']}, and loading them quantizes the base the same way: {exc}") from exc
    try:
        backbone = Backbone.from_pretrained(base["spec"], dtype=base.get("dtype") or "float32",
                                            gguf_file=base.get("gguf_file"), quantization=quantization)
    except BackboneError as exc:
        raise CheckpointError(
            f"{folder}: this checkpoint holds {saved['peft']['method']} adapters for the base model "
            f"{base['spec']!r}, which must be loaded first and cannot be: {exc}") from exc
    if backbone.base["fingerprint"] != base["fingerprint"]:
        raise CheckpointError(
            f"{folder}: its adapters were trained on another {base['spec']!r}: the weights there now have "
            f"fingerprint {backbone.base['fingerprint']}, the checkpoint's base had {base['fingerprint']}. Load it "
            "with the base it was trained on (or export a merged model from where that base exists)")
    backbone.tokenizer = saved_tokenizer(folder / "tokenizer")
    if len(backbone.tokenizer) != backbone.model.get_input_embeddings().num_embeddings:
        backbone.model.resize_token_embeddings(len(backbone.tokenizer))
    apply(backbone, peft_config(saved["peft"]), tokens=saved["peft"].get("trained_tokens", ()))
    return backbone
