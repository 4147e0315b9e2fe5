"""Building a model: the one place that turns a backbone config or a saved run into a MultiTaskModel.

``build_model`` covers every way a model comes to exist: a from-scratch preset, pretrained weights (hub id,
folder, GGUF file), a saved run (its architecture and tokenizer, then its tensors), an adapter-only save (its
base loaded again from its source and checked by fingerprint, then the adapters), and the trainer's variants
(a resumed run, a run that starts from another's backbone with ``init_from``). ``load`` and ``load_backbone``
are its callers for checkpoints.

A checkpoint is a format (nlpkit.engine.checkpoint reads and writes its files and knows nothing of models);
the model owns what it saves (MultiTaskModel.saved_names). Any damage found while building from a checkpoint
is a CheckpointError naming the file.
"""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..sdk.errors import BackboneError, CheckpointError, ConfigError, NlpkitError, UnknownTaskError
from ..sdk.registry import get_task_class
from . import adapters
from .adapters import AdapterSpec, quantization_config
from .backbone import PRESETS, Backbone, saved_tokenizer, train_tokenizer
from .checkpoint import META_FILE, WEIGHTS_FILE, read_meta, read_tensors, resolve
from .config import BackboneConfig
from .model import MultiTaskModel
from .sharding import SHARDED_DIR, is_sharded


def build_model(source: BackboneConfig | str | Path, tasks: Sequence[Any] | None = None, *,
                device: torch.device | None = None, texts: Iterable[str] | None = None,
                preset_tokenizer: Callable[[], Any] | None = None, resume: str | Path | None = None,
                init_from: str | Path | None = None, gradient_checkpointing: bool = False,
                check_backbone: Callable[[Backbone], None] | None = None) -> MultiTaskModel:
    """A model of a backbone and one head per task, from ``source``:

    - a saved run (a folder): its backbone (an adapter-only one over its base, checked by fingerprint), heads
      for ``tasks`` (default: the tasks it saved), and every tensor it saved, each matched by name and shape;
    - a BackboneConfig (a run about to train): a preset (its tokenizer from ``preset_tokenizer``, else learned
      from ``texts``) or pretrained weights, loaded for ``device``; or, with ``init_from``, the backbone of that
      checkpoint with its adapters merged. Then the config's dropout and attention, the tasks' tokens, the
      config's adapters, and the heads; with ``resume``, every tensor of that checkpoint.

    ``check_backbone`` sees the backbone before any head is built (the trainer checks the tasks against it).
    """
    if not isinstance(source, BackboneConfig):
        folder = resolve(source)
        meta = read_meta(folder)  # once: it also checks the sizes of every file the checkpoint lists
        tasks = saved_tasks(folder, meta) if tasks is None else tasks
        return _assemble(_saved_backbone(folder, weights=False, meta=meta), tasks, weights=folder,
                         damaged=folder / META_FILE)
    if tasks is None:
        raise ConfigError("build_model from a backbone config needs the tasks whose heads it builds")
    backbone = _configured_backbone(source, device or torch.device("cpu"), texts, preset_tokenizer,
                                    None if resume is None else Path(resume), init_from)
    if check_backbone is not None:
        check_backbone(backbone)
    if source.dropout is not None:
        backbone.set_dropout(source.dropout)
    backbone.set_attention(source.attention)
    added = [tok for t in tasks for tok in t.special_tokens()]
    backbone.add_special_tokens(added)
    if source.peft is not None:
        spec = AdapterSpec.from_config(source.peft, added, base=backbone.base)  # adapter storage: a loadable base
        adapters.apply(backbone, spec, gradient_checkpointing=gradient_checkpointing)
    model = _assemble(backbone, tasks)
    if gradient_checkpointing:
        adapters.enable_gradient_checkpointing(model)
    if resume is not None:
        load_weights(model, resume)
    return model


def _assemble(backbone: Backbone, tasks: Sequence[Any], weights: Path | None = None,
              damaged: Path | None = None) -> MultiTaskModel:
    """Heads on ``backbone`` and the model; ``damaged``: the file a head that cannot be built blames (a saved
    run's nlpkit.json), else the plugin's error passes as it is."""
    heads = {}
    for task in tasks:
        blame = _damage(damaged, f"task {task.name!r}: its head cannot be built from the saved state") \
            if damaged is not None else contextlib.nullcontext()
        with blame:
            task.setup(backbone)
            heads[task.name] = task.build_head(backbone)
    model = MultiTaskModel(backbone, heads)
    if weights is not None:
        load_weights(model, weights)
    return model


def _configured_backbone(config: BackboneConfig, device: torch.device, texts: Iterable[str] | None,
                         preset_tokenizer: Callable[[], Any] | None, resume: Path | None,
                         init_from: str | Path | None) -> Backbone:
    """The backbone a training run starts with, before the tasks' tokens and the adapters."""
    spec = config.spec
    if init_from and resume is None:  # the checkpoint's architecture, tokenizer and weights
        backbone = _saved_backbone(resolve(init_from), weights=True)
        adapters.merge(backbone)  # a peft run's adapters become weights; this run may add its own
        return backbone
    load = adapters.load_options(config, device)
    saved = adapters_of(resume) if resume is not None else None
    if saved is not None and saved.storage == "adapter":
        return Backbone.from_pretrained(spec, **load)  # its base; the adapters come with the checkpoint's weights
    if init_from or spec not in PRESETS and resume is not None and (resume / "backbone").is_dir():
        return Backbone.from_saved(resume, spec)
    if spec not in PRESETS:
        return Backbone.from_pretrained(spec, **load)
    if preset_tokenizer is not None:
        tokenizer = preset_tokenizer()
    elif texts is not None:
        tokenizer = train_tokenizer(texts, config.vocab_size or PRESETS[spec]["vocab_size"])
    else:
        raise BackboneError(f"the from-scratch preset {spec!r} needs training text for its tokenizer")
    preset = {k: v for k, v in PRESETS[spec].items() if k != "vocab_size"}
    return Backbone.from_scratch(preset, tokenizer, spec)


def adapters_of(folder: str | Path, meta: dict[str, Any] | None = None) -> AdapterSpec | None:
    """The adapters a checkpoint's backbone carries, read from its nlpkit.json (``meta``, when the caller read it
    already; None: a plain backbone)."""
    folder = resolve(folder)
    saved = (meta or read_meta(folder))["backbone"]
    if not saved.get("peft"):
        return None
    try:
        return AdapterSpec.from_json(saved["peft"], saved.get("base"))
    except CheckpointError as exc:
        raise CheckpointError(f"{folder / META_FILE}: {exc}") from None


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


def saved_tasks(folder: str | Path, meta: dict[str, Any] | None = None) -> list[Any]:
    """The task objects a checkpoint saved, with their options and label state."""
    folder = resolve(folder)
    return [_saved_task(entry, folder / META_FILE) for entry in (meta or read_meta(folder))["tasks"]]


def load(folder: str | Path, only: Sequence[str] | None = None):
    """Rebuild (model, tasks, meta) from a checkpoint without any network access.

    This is the complete check of a checkpoint: every file is read and every tensor matched by name and
    shape, and any damage is a CheckpointError naming the file (never a traceback from a library).
    """
    folder = resolve(folder)
    meta = read_meta(folder)
    tasks = saved_tasks(folder, meta)
    model = build_model(folder, tasks)
    model.eval()
    if only:
        tasks = [t for t in tasks if t.name in only]
    return model, tasks, meta


def load_backbone(path: str | Path, weights: bool = True) -> Any:
    """The backbone of a checkpoint (architecture, tokenizer and, with ``weights``, its tensors), checked
    completely: for --init-from, call it before the run folder is touched and use what it returns."""
    return _saved_backbone(resolve(path), weights)


def _saved_backbone(folder: Path, weights: bool, meta: dict[str, Any] | None = None) -> Backbone:
    meta = meta or read_meta(folder)
    spec = adapters_of(folder, meta)
    if spec is not None and spec.storage == "adapter":  # the base from its source, then the adapters
        backbone = _adapter_backbone(folder, spec)
    else:
        backbone = Backbone.from_saved(folder, meta["backbone"]["spec"])
        if spec is not None:
            adapters.apply(backbone, spec)
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


# ---- loading an adapter-only checkpoint ---------------------------------------------------------------
def _adapter_backbone(folder: Path, spec: AdapterSpec) -> Backbone:
    """The backbone of an adapter-only checkpoint: its base loaded again (and checked), the checkpoint's
    tokenizer, the embeddings sized to it, and empty adapters for the checkpoint's tensors."""
    base = spec.base
    quantization = None
    if base.quantize:  # QLoRA: its base fingerprint is of the quantized weights; quantize them again
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            quantization = quantization_config(base.quantize, device)
        except ConfigError as exc:
            raise CheckpointError(
                f"{folder}: its {spec.method} adapters were trained on {base.spec!r} quantized to "
                f"{base.quantize}, and loading them quantizes the base the same way: {exc}") from exc
    try:
        backbone = Backbone.from_pretrained(base.spec, dtype=base.dtype, gguf_file=base.gguf_file,
                                            quantization=quantization)
    except BackboneError as exc:
        raise CheckpointError(
            f"{folder}: this checkpoint holds {spec.method} adapters for the base model "
            f"{base.spec!r}, which must be loaded first and cannot be: {exc}") from exc
    if backbone.base.fingerprint != base.fingerprint:
        raise CheckpointError(
            f"{folder}: its adapters were trained on another {base.spec!r}: the weights there now have "
            f"fingerprint {backbone.base.fingerprint}, the checkpoint's base had {base.fingerprint}. Load it "
            "with the base it was trained on (or export a merged model from where that base exists)")
    backbone.tokenizer = saved_tokenizer(folder / "tokenizer")
    if len(backbone.tokenizer) != backbone.model.get_input_embeddings().num_embeddings:
        backbone.model.resize_token_embeddings(len(backbone.tokenizer))
    adapters.apply(backbone, spec)
    return backbone
