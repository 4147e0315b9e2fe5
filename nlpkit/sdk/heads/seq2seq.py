"""The sequence-to-sequence head: how generation tasks train and decode on the shared backbone.

An encoder-decoder backbone (T5, BART, Marian, mBART) lends its own pretrained decoder and LM head;
the head then owns no weights. An encoder-only backbone (BERT, MiniLM, the from-scratch presets) gets
a decoder built here as a Hugging Face ``BertLMHeadModel`` (causal self-attention, cross-attention to
the backbone's last hidden states), whose word embeddings and output projection ARE the backbone's
input embeddings. Both paths are Hugging Face models, so decoding is transformers' ``generate``
(greedy, beam search, length penalty, n-gram blocking, early stopping, batched); nothing of it is
re-implemented here.

Target convention (``target_ids``): an encoder-decoder model gets its tokenizer's own target format
(``text_target=``: T5 ``y </s>``, BART ``<s> y </s>``) and shifts it right itself; the built decoder
gets ``y [EOS]`` and starts from [BOS] ([CLS]/[SEP] for BERT vocabularies without BOS/EOS). A
decoder-only backbone gets ``y [EOS]`` too, after its prompt (``heads.causal_sft``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import BackboneError, ConfigError, NotStandard


@dataclass(frozen=True)
class TargetTokens:
    """Token ids generation needs: the decoder's first input, end of sequence, padding."""

    start: int
    eos: int
    pad: int


def target_tokens(backbone: Any) -> TargetTokens:
    tok = backbone.tokenizer
    if backbone.kind == "encoder-decoder":
        cfg, gen = backbone.model.config, getattr(backbone.model, "generation_config", None)
        start = _first(getattr(gen, "decoder_start_token_id", None), getattr(cfg, "decoder_start_token_id", None),
                       getattr(cfg, "pad_token_id", None))
        eos = _first(getattr(gen, "eos_token_id", None), getattr(cfg, "eos_token_id", None), tok.eos_token_id)
        pad = _first(getattr(cfg, "pad_token_id", None), tok.pad_token_id, eos)
    elif backbone.kind == "decoder":  # a causal LM continues its prompt: "start" is only nominal (Qwen has no BOS)
        eos = _first(tok.eos_token_id, getattr(getattr(backbone.model, "generation_config", None), "eos_token_id", None))
        start = _first(tok.bos_token_id, eos)
        pad = _first(tok.pad_token_id, eos)
    else:
        start = _first(tok.bos_token_id, tok.cls_token_id)
        eos = _first(tok.eos_token_id, tok.sep_token_id)
        pad = _first(tok.pad_token_id, eos)
    if start is None or eos is None or pad is None:
        raise BackboneError(
            f"backbone {backbone.spec!r}: its tokenizer has no start/end-of-sequence tokens "
            f"(bos/cls = {start}, eos/sep = {eos}, pad = {pad}); generation needs them")
    return TargetTokens(int(start), int(eos), int(pad))


def _first(*values: Any) -> Any:
    for v in values:
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if v is not None:
            return v
    return None


def target_ids(tokenizer: Any, kind: str, texts: Sequence[str], max_length: int, eos: int) -> tuple[list[list[int]], list[int]]:
    """Label ids per target text, cut to ``max_length`` tokens; also the indices of those that were cut."""
    cut: list[int] = []
    if kind == "encoder-decoder":
        full = tokenizer(text_target=list(texts))["input_ids"]
        long = [i for i, ids in enumerate(full) if len(ids) > max_length]
        if long:
            short = tokenizer(text_target=[texts[i] for i in long], truncation=True, max_length=max_length)["input_ids"]
            for i, ids in zip(long, short):
                full[i] = ids
        return full, long
    out = []
    for i, ids in enumerate(tokenizer(list(texts), add_special_tokens=False)["input_ids"]):
        if len(ids) + 1 > max_length:
            ids = ids[: max_length - 1]
            cut.append(i)
        out.append(list(ids) + [eos])
    return out, cut


def shift_right(labels: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: [start] + labels[:-1], with ignored positions as padding."""
    shifted = labels.new_full(labels.shape, pad)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start
    return shifted.masked_fill(shifted == -100, pad)


class Seq2SeqHead(nn.Module):
    """Teacher-forced loss in ``forward``; decoding in ``generate``.

    ``decoder_layers`` (default: as many as the encoder has) and ``dropout`` only matter for an
    encoder-only backbone; ``max_positions`` bounds the built decoder's target length.
    """

    def __init__(self, backbone: Any, decoder_layers: int | None = None, dropout: float = 0.1,
                 label_smoothing: float = 0.0, max_positions: int = 512):
        super().__init__()
        self.tokens = target_tokens(backbone)
        self.label_smoothing = label_smoothing
        self.encoder_decoder = backbone.kind == "encoder-decoder"
        self.max_positions = max_positions
        self.decoder = None if self.encoder_decoder else _build_decoder(backbone, self.tokens, decoder_layers,
                                                                         dropout, max_positions)

    # ---- training ---------------------------------------------------------------------------------
    def forward(self, backbone: nn.Module, batch: dict) -> dict:
        labels = batch.get("labels")
        if self.encoder_decoder:
            model = backbone.model
            if labels is None:
                raise ValueError("an encoder-decoder head needs labels in training; use generate() to predict")
            if hasattr(model, "prepare_decoder_input_ids_from_labels"):
                decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
            else:
                decoder_input_ids = shift_right(labels, self.tokens.start, self.tokens.pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=decoder_input_ids, use_cache=False).logits
        else:
            if labels is None:
                raise ValueError("the seq2seq head needs labels in training; use generate() to predict")
            hidden = backbone.encode(batch["input_ids"], batch["attention_mask"])
            # right padding + causal self-attention: padded positions never influence real ones
            logits = self.decoder(input_ids=shift_right(labels, self.tokens.start, self.tokens.pad),
                                  encoder_hidden_states=hidden, encoder_attention_mask=batch["attention_mask"],
                                  use_cache=False).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                           ignore_index=-100, label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}

    # ---- decoding ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, backbone: nn.Module, batch: dict, *, num_beams: int = 1, max_new_tokens: int = 128,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, early_stopping: bool = True) -> torch.Tensor:
        """Generated ids (batch, steps) without the start token; rows end in EOS then padding, or are cut."""
        kwargs: dict[str, Any] = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.tokens.eos, pad_token_id=self.tokens.pad)
        if no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
        if num_beams > 1:  # beam-only flags; transformers warns when they come with greedy search
            kwargs.update(length_penalty=length_penalty, early_stopping=early_stopping)
        if self.encoder_decoder:
            out = backbone.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          decoder_start_token_id=self.tokens.start, **kwargs)
            return out[:, 1:]
        from transformers import DynamicCache, EncoderDecoderCache

        if max_new_tokens + 1 > self.max_positions:
            raise ConfigError(f"max_new_tokens={max_new_tokens} does not fit this decoder "
                              f"({self.max_positions} positions); use at most {self.max_positions - 1}")
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"])
        start = batch["input_ids"].new_full((hidden.size(0), 1), self.tokens.start)
        # BertLMHeadModel's cross-attention needs an encoder-decoder cache; generate() would make a plain one
        out = self.decoder.generate(input_ids=start, attention_mask=torch.ones_like(start),
                                    encoder_hidden_states=hidden, encoder_attention_mask=batch["attention_mask"],
                                    cache=EncoderDecoderCache(DynamicCache(), DynamicCache()), **kwargs)
        return out[:, 1:]

    # ---- export -----------------------------------------------------------------------------------
    def to_transformers(self, backbone: Any, task: Any) -> tuple[Any, str]:
        """AutoModelForSeq2SeqLM: an encoder-decoder backbone IS the standard model. The prefix and decoding
        settings go into its config, so that ``generate`` and pipeline() write what nlpkit writes (the export
        checks that on the sample inputs)."""
        import copy

        if not self.encoder_decoder:
            raise NotStandard("the seq2seq head on an encoder backbone is a decoder built by nlpkit whose "
                              "embeddings are tied to the encoder's; no Auto class loads that pair as it is")
        model = copy.deepcopy(backbone.model)
        strategy = task.strategy  # its TextGeneration: the prefix, tokens and decoding settings it generates with
        model.config.prefix = strategy.prefix or None
        o = strategy.options
        gen = model.generation_config
        gen.num_beams, gen.max_new_tokens, gen.do_sample = o.num_beams, strategy.max_new_tokens, False
        gen.decoder_start_token_id = strategy.tokens.start
        gen.eos_token_id, gen.pad_token_id = strategy.tokens.eos, strategy.tokens.pad
        gen.no_repeat_ngram_size = o.no_repeat_ngram_size or None
        if o.num_beams > 1:
            gen.length_penalty, gen.early_stopping = o.length_penalty, o.early_stopping
        gen.max_length = None
        return model, "AutoModelForSeq2SeqLM"


def _build_decoder(backbone: Any, tokens: TargetTokens, layers: int | None, dropout: float, max_positions: int) -> nn.Module:
    from transformers import BertConfig, BertLMHeadModel

    enc = backbone.model.config
    embeddings = backbone.model.get_input_embeddings()
    vocab, width = embeddings.weight.shape
    if width != backbone.hidden_size:
        raise BackboneError(f"backbone {backbone.spec!r}: embedding width {width} differs from its hidden size "
                            f"{backbone.hidden_size}; a tied decoder head cannot be built on it")
    heads = getattr(enc, "num_attention_heads", None) or getattr(enc, "n_heads", None) or 4
    if width % heads:
        heads = next(h for h in (8, 4, 2, 1) if width % h == 0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers or getattr(enc, "num_hidden_layers", None) or getattr(enc, "n_layers", None) or 2,
        num_attention_heads=heads,
        intermediate_size=getattr(enc, "intermediate_size", None) or 4 * width,
        hidden_act=getattr(enc, "hidden_act", "gelu") if isinstance(getattr(enc, "hidden_act", None), str) else "gelu",
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_positions,
        type_vocab_size=1,
        layer_norm_eps=getattr(enc, "layer_norm_eps", 1e-12),
        is_decoder=True,
        add_cross_attention=True,
        pad_token_id=tokens.pad,
        bos_token_id=tokens.start,
        eos_token_id=tokens.eos,
        decoder_start_token_id=tokens.start,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    decoder = BertLMHeadModel(config)
    # tie: the decoder reads and writes the backbone's own vocabulary matrix
    decoder.bert.embeddings.word_embeddings = embeddings
    decoder.cls.predictions.decoder.weight = embeddings.weight
    return decoder
