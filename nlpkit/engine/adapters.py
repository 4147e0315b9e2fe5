"""Parameter-efficient fine-tuning (LoRA, DoRA through peft), quantized bases (QLoRA) and how their
checkpoints are stored.

peft injects its adapter layers into the backbone's own modules (``inject_adapter_in_model``), so the model
keeps its class and every head keeps calling ``backbone.encode``; nothing else in nlpkit knows whether
adapters are there. What is trained: the adapters, every task head (heads live outside the backbone, so
peft never freezes them, the trap where a head comes back random after reload cannot happen), and the
embedding rows of the tokens a task added (peft's trainable tokens: only those rows, not the whole matrix,
which is 170M of Gemma-3-270M's 268M parameters).

Storage. When the base can be loaded again (a folder, hub id or GGUF file: ``Backbone.base``), a checkpoint
holds only what was trained: adapters, heads, grown embeddings, plus the base's spec and a fingerprint of
its weights. Loading it loads the base first and refuses one whose fingerprint differs. A preset's random
base exists nowhere else, so such a checkpoint holds every tensor ("full").
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import torch
from torch import nn

from ..sdk.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from .config import PeftConfig

#: elements sampled from each tensor for the base fingerprint: enough to tell two trainings or two
#: quantizations of one architecture apart, cheap on a billion parameters
FINGERPRINT_SAMPLE = 256


def fingerprint(model: nn.Module) -> str:
    """A short hash of the names, shapes and a strided sample of every tensor of ``model``."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // FINGERPRINT_SAMPLE)
            sample = flat[::step][:FINGERPRINT_SAMPLE].to("cpu", torch.float32).numpy().tobytes()
            digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
            digest.update(sample)
    return digest.hexdigest()[:20]


# ---- the adapters' record --------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseRef:
    """The pretrained weights under an adapter-only checkpoint: where to load them from again, how (dtype, GGUF
    file, quantization, as training loaded them), and the fingerprint that tells whether what is found there
    now is still what the adapters were trained on."""

    spec: str
    fingerprint: str
    gguf_file: str | None = None
    dtype: str = "float32"
    vocab: int | None = None
    #: backbone.quantize of a QLoRA base: its fingerprint is of the quantized tensors, so a reload quantizes too
    quantize: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "gguf_file": self.gguf_file, "dtype": self.dtype, "vocab": self.vocab,
                "fingerprint": self.fingerprint, "quantize": self.quantize}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BaseRef":
        """What any nlpkit wrote (``quantize`` came later; a missing dtype was float32)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("spec"), str) \
                or not isinstance(data.get("fingerprint"), str):
            raise CheckpointError(f"damaged base record (needs spec and fingerprint): {str(data)[:200]}")
        return cls(spec=data["spec"], fingerprint=data["fingerprint"], gguf_file=data.get("gguf_file"),
                   dtype=data.get("dtype") or "float32", vocab=data.get("vocab"), quantize=data.get("quantize"))


#: how a checkpoint stores a peft backbone: only what was trained ("adapter", over a base loaded again from
#: its source) or every tensor ("full": a preset's random base, which exists nowhere else)
STORAGES = ("adapter", "full")
METHODS = ("lora", "dora")


@dataclass(frozen=True)
class AdapterSpec:
    """Everything that says which adapters a backbone carries, from ``--peft lora`` to nlpkit.json and back.

    One immutable value, made once (from the run's PeftConfig when adapters are injected, or from a checkpoint's
    JSON when they are injected again for loading) and then only read: by the trainer's summary, by what a
    checkpoint saves, by loading. ``targets`` is what the user asked for ("auto", "all-linear" or module names);
    ``to_peft`` resolves "auto" against the model. ``base`` is set exactly when ``storage`` is "adapter".
    """

    method: Literal["lora", "dora"] = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: str | tuple[str, ...] = "auto"
    #: the tokens the tasks added, whose embedding rows are trained beside the adapters
    trained_tokens: tuple[str, ...] = ()
    storage: Literal["adapter", "full"] = "full"
    base: BaseRef | None = None

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):  # a list from YAML or JSON; a tuple keeps the value hashable
            object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "trained_tokens", tuple(self.trained_tokens))
        if self.method not in METHODS:
            raise ValueError(f"adapter method must be one of {METHODS}, not {self.method!r}")
        if self.storage not in STORAGES:
            raise ValueError(f"adapter storage must be one of {STORAGES}, not {self.storage!r}")
        if (self.storage == "adapter") != (self.base is not None):
            raise ValueError("adapter storage needs the base it was trained on, and only adapter storage has one")

    @classmethod
    def from_config(cls, config: PeftConfig, tokens: Sequence[str] = (), base: BaseRef | None = None) -> "AdapterSpec":
        """A run's adapters: ``config`` is its backbone.peft (a PeftConfig), ``tokens`` the tokens its tasks
        added, ``base`` the loadable base under them (None: a preset, saved whole)."""
        return cls(method=config.method, r=config.r, alpha=config.alpha, dropout=config.dropout,
                   targets=config.target_modules, trained_tokens=tuple(sorted(set(tokens))),
                   storage="adapter" if base is not None else "full", base=base)

    def to_json(self) -> dict[str, Any]:
        """nlpkit.json's backbone.peft, in the keys every nlpkit wrote; the base goes beside it (``base_json``)."""
        targets = list(self.targets) if isinstance(self.targets, tuple) else self.targets
        return {"method": self.method, "r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": targets, "trained_tokens": list(self.trained_tokens), "storage": self.storage}

    def base_json(self) -> dict[str, Any] | None:
        return None if self.base is None else self.base.to_json()

    @classmethod
    def from_json(cls, data: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> "AdapterSpec":
        """A checkpoint's backbone.peft (and backbone.base beside it). Older files lack trained_tokens and may
        lack storage (both then mean: none, every tensor saved); damage is a CheckpointError."""
        try:
            storage = data.get("storage") or "full"
            return cls(method=data["method"], r=data["r"], alpha=data["alpha"], dropout=data["dropout"],
                       targets=data["target_modules"], trained_tokens=tuple(data.get("trained_tokens") or ()),
                       storage=storage, base=BaseRef.from_json(base or {}) if storage == "adapter" else None)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"damaged adapter record backbone.peft ({type(exc).__name__}: {exc})") from exc

    def to_peft(self, model: nn.Module | None = None, token_ids: Sequence[int] | None = None) -> Any:
        """peft's LoraConfig. ``model``: needed to resolve targets "auto" (peft's default for its
        architecture); ``token_ids``: the vocabulary ids of ``trained_tokens``."""
        from peft import LoraConfig

        targets = self.targets
        if targets == "auto":
            if model is None:
                raise ValueError("targets 'auto' are resolved against a model: pass it")
            targets = target_modules(model, "auto")
        elif isinstance(targets, tuple):
            targets = list(targets)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          use_dora=self.method == "dora", bias="none",
                          trainable_token_indices=list(token_ids) if token_ids else None)


# ---- loading options ----------------------------------------------------------------------------------
def load_options(config: Any, device: torch.device) -> dict[str, Any]:
    """``Backbone.from_pretrained`` keywords for a backbone config: dtype, GGUF file, quantization.

    dtype "auto" is float32 (AdamW on half-precision weights loses small updates), except the frozen base of a
    peft run on a GPU, which keeps the checkpoint's own dtype: it is never updated, and half of it is memory.
    """
    dtype = config.dtype
    if dtype == "auto":
        dtype = "auto" if config.peft is not None and device.type == "cuda" else "float32"
    options = {"dtype": dtype, "gguf_file": config.gguf_file}
    if config.quantize:
        options["quantization"] = quantization_config(config.quantize, device)
    return options


def check_quantize(quantize: str | None, device: torch.device) -> None:
    """At start-up, before any weights are read: bitsandbytes quantization runs on CUDA only, and a run must
    never fall back to full precision silently."""
    if quantize is None:
        return
    if device.type != "cuda":
        why = "no CUDA GPU is visible" if not torch.cuda.is_available() else "trainer.cpu is set"
        raise ConfigError(
            f"backbone.quantize={quantize}: bitsandbytes {quantize} quantization (QLoRA) needs a CUDA GPU, and "
            f"{why}. Drop backbone.quantize to train the adapters on the unquantized base (--peft lora alone), "
            "or run on a GPU machine")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"backbone.quantize={quantize} needs the bitsandbytes package: pip install bitsandbytes")


def quantization_config(quantize: str, device: torch.device) -> Any:
    from transformers import BitsAndBytesConfig

    check_quantize(quantize, device)
    if quantize == "4bit":  # QLoRA's recipe: NF4, double quantization, bf16 compute
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def quantization_name(quantization: Any) -> str | None:
    """backbone.quantize's value for a quantization config (None: no quantization), kept with an adapter
    checkpoint's base so that loading it quantizes the base as training did."""
    if quantization is None:
        return None
    if getattr(quantization, "load_in_4bit", False):
        return "4bit"
    if getattr(quantization, "load_in_8bit", False):
        return "8bit"
    return type(quantization).__name__


# ---- applying adapters --------------------------------------------------------------------------------
def apply(backbone: Any, spec: Any, tokens: Sequence[str] = (), gradient_checkpointing: bool = False) -> None:
    """Inject the adapters ``spec`` describes into ``backbone.model`` and freeze what peft does not train; call
    after the tasks' tokens were added and before the heads are built. ``spec``: an AdapterSpec (a saved one,
    injected again), or a run's PeftConfig with ``tokens``, the tokens its tasks added. The rows of those tokens
    (entity markers) must be learned: they are trained (and saved) on their own, through peft's
    ``trainable_token_indices``, on the input embeddings and on an output layer tied to them."""
    from peft import inject_adapter_in_model

    if not isinstance(spec, AdapterSpec):  # saved as adapters only when the base can be loaded again
        spec = AdapterSpec.from_config(spec, tokens, base=backbone.base)
    elif tokens:
        raise ValueError("an AdapterSpec names its trained tokens itself")
    model = backbone.model
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):  # bitsandbytes
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    tokens = list(spec.trained_tokens)
    token_ids = sorted({int(i) for i in backbone.tokenizer.convert_tokens_to_ids(tokens)}) if tokens else None
    lora = spec.to_peft(model, token_ids)
    try:
        inject_adapter_in_model(lora, model)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"backbone.peft.target_modules: {str(exc).splitlines()[0][:300]}") from exc
    backbone.peft = spec


def target_modules(model: nn.Module, wanted: Any) -> Any:
    """peft's own default targets for the architecture (attention query/value), "all-linear", or the list."""
    if wanted != "auto":
        return wanted
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = model.config.model_type
    if model_type not in DEFAULTS:
        raise ConfigError(f"backbone.peft.target_modules: peft has no default for model_type {model_type!r}; "
                          "give all-linear or a list of module names")
    return list(DEFAULTS[model_type])


def adapter_only(backbone: Any) -> bool:
    spec = getattr(backbone, "peft", None)
    return spec is not None and spec.storage == "adapter"


def trained_names(module: nn.Module) -> set[str]:
    """Names of the parameters of ``module`` that training updates (adapters, trainable token rows)."""
    return {name for name, p in module.named_parameters() if p.requires_grad}


def saved_names(model: nn.Module) -> set[str] | None:
    """The state-dict names a checkpoint of ``model`` holds: None for all of them; for a peft backbone over a
    loadable base, the heads plus what the backbone trains (its adapters and added-token rows)."""
    backbone = model.backbone
    if not adapter_only(backbone):
        return None
    trained = {f"backbone.{n}" for n in trained_names(backbone)}
    return {name for name in model.state_dict() if not name.startswith("backbone.") or name in trained}


def tensors_to_save(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """What ``safetensors.save_file`` writes for an adapter-only checkpoint (tied tensors once); None: all."""
    names = saved_names(model)
    if names is None:
        return None
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape) if tensor.numel() else (name,)
        if name in names and key not in seen:
            seen.add(key)
            out[name] = tensor.detach().contiguous()
    return out


def merge(backbone: Any) -> None:
    """Fold the adapters (and trained token rows) into the base weights and remove them: the plain architecture
    again (for export, or a run that starts from a peft checkpoint). The result is no longer the loadable base."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    if getattr(backbone, "peft", None) is None:
        return
    model = backbone.model
    for kind in (AuxiliaryTrainingWrapper, BaseTunerLayer):  # token wrappers first: they hold a tuner layer
        for name, module in list(model.named_modules()):
            if not isinstance(module, kind) or name and not _attached(model, name, module):
                continue
            if kind is AuxiliaryTrainingWrapper:
                plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
            else:
                module.merge()
                plain = module.get_base_layer()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    for param in model.parameters():
        param.requires_grad_(True)
    backbone.peft, backbone.base = None, None


def _attached(model: nn.Module, name: str, module: nn.Module) -> bool:
    """Whether ``module`` is still at ``name`` (an earlier replacement may have removed its parent)."""
    try:
        return model.get_submodule(name) is module
    except AttributeError:
        return False


def summary(model: nn.Module) -> str | None:
    """The run log's line on what is trained, for a peft run (None otherwise)."""
    backbone = model.backbone
    spec = getattr(backbone, "peft", None)
    if spec is None:
        return None
    trained = sum(t.numel() for t in model.parameters() if t.requires_grad)
    total = sum(t.numel() for t in model.parameters())
    targets = spec.to_json()["target_modules"]
    targets = targets if targets != "auto" else ",".join(target_modules(backbone.model, "auto"))
    where = "adapters + heads saved, base reloaded from its source" if spec.storage == "adapter" \
        else "every weight saved (the base cannot be loaded from anywhere else)"
    extra = f" + the embedding rows of {len(spec.trained_tokens)} added token(s)" if spec.trained_tokens else ""
    return (f"peft: {spec.method} r={spec.r} alpha={spec.alpha:g} on {targets}{extra}: {trained:,} of {total:,} "
            f"parameters trained ({100 * trained / max(1, total):.2f}%); checkpoints: {where}")


def describe(backbone: Any) -> dict[str, Any]:
    """The checkpoint's record of the adapters and, for adapter storage, their base (none: a plain backbone)."""
    spec = getattr(backbone, "peft", None)
    if spec is None:
        return {}
    out = {"peft": spec.to_json()}
    if spec.base is not None:
        out["base"] = spec.base_json()
    return out


def check_loaded(model: nn.Module, path: Path, missing: list[str], unexpected: list[str]) -> None:
    """An adapter-only checkpoint must have brought every tensor that is not the base's."""
    names = saved_names(model)
    if names is None:
        raise AssertionError("check_loaded is for adapter-only checkpoints")
    absent = sorted(set(missing) & names)
    if absent or unexpected:
        raise CheckpointError(f"{path} does not match the model: missing {absent[:5]}, unexpected {sorted(unexpected)[:5]}")


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Non-reentrant activation checkpointing in every transformers model of ``model`` (the backbone, a
    decoder built inside a head). Non-reentrant: frozen inputs (LoRA's frozen embeddings) need no
    ``enable_input_require_grads`` and the loss is the same as without. Returns how many were switched."""
    from transformers import PreTrainedModel

    count = 0
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            if not module.is_gradient_checkpointing:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            count += 1
    if not count:
        raise ConfigError("performance.gradient_checkpointing: this backbone's model does not support "
                          "gradient checkpointing")
    return count
