"""What every text-to-text task shares: decoding options, encoding of (source, target) pairs,
the heads, generation with transformers' ``generate`` and the length bookkeeping around it.

Two layers:
  * ``TextGenerator`` does everything about (source, target) STRINGS on any backbone kind: the prompt
    (a T5 prefix, or on a decoder-only model an instruction template / the tokenizer's chat template),
    tokenisation and truncation, collation, the head (``Seq2SeqHead`` or ``CausalSftHead``), decoding
    and turning ids back into text. It knows nothing of files, metrics or a task's examples.
  * ``TextGeneration`` is the modeling strategy (nlpkit.sdk.modeling) of every task whose model answers by
    writing text. The task gives two functions: ``render(example) -> (source, target or None)`` and
    ``parse(example, Generated) -> prediction``. Translation and summarization keep the defaults
    (``{"source", "target"}`` examples, the text as the prediction); generative NER renders a sentence
    with its entities bracketed inline and parses the generated text back into tags. Examples without a
    target are for prediction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

from . import options as _options
from .errors import ConfigError, DataError, NotStandard
from .modeling import Modeling
from .task import Task, TaskOptions

log = logging.getLogger("nlpkit.generation")

#: warn when the mean output length reaches this share of ``max_new_tokens``
LIMIT_WARN_SHARE = 0.9
#: stands for the source while a chat template is rendered once; split out of the text afterwards
SOURCE_SLOT = "\u2063nlpkit-source\u2063"


@dataclass
class GenerationOptions(TaskOptions):
    #: source tokens (prefix included); on a decoder-only backbone: prompt tokens, template included
    #: (the source is cut, the template kept); longer inputs are truncated and counted in a warning
    max_length: int = 256
    #: target tokens in training (EOS included); longer targets are truncated and counted in a warning
    max_target_length: int = 128
    #: T5-style task prefix put before every source: "auto" asks the backbone (T5 gets one); "" or null: none.
    #: Encoders and encoder-decoders only: on a decoder-only backbone the task's instruction replaces it
    prefix: Optional[str] = "auto"
    #: decoder-only backbones: how the prompt is framed. plain: "{instruction}\n{source}\n{cue}" after BOS;
    #: chat: the tokenizer's chat template (one user turn, then the generation prompt); auto: chat when the
    #: tokenizer has a chat_template, else plain
    prompt_format: Literal["auto", "plain", "chat"] = "auto"
    #: 1 = greedy search; more = beam search
    num_beams: int = 1
    #: longest output; default max_target_length
    max_new_tokens: Optional[int] = None
    #: beam search: > 1 favours longer outputs, < 1 shorter ones
    length_penalty: float = 1.0
    #: never repeat an n-gram of this size in the output (0 = off); on a decoder-only backbone the prompt
    #: is not counted, so copying a name from the source stays possible
    no_repeat_ngram_size: int = 0
    #: beam search stops as soon as num_beams finished candidates exist
    early_stopping: bool = True
    label_smoothing: float = 0.0
    #: an empty source or target is an error (file:line); true skips the pair and counts it in a warning
    skip_empty: bool = False
    #: encoder-only backbones: decoder layers (default: as many as the encoder) and their dropout
    decoder_layers: Optional[int] = None
    dropout: float = 0.1

    def validate(self, key: str) -> None:
        super().validate(key)
        _options.require(2 <= self.max_target_length <= 100_000, f"{key}.max_target_length", "must be between 2 and 100000")
        _options.require(self.num_beams >= 1, f"{key}.num_beams", "must be >= 1")
        _options.require(self.max_new_tokens is None or self.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1")
        _options.require(self.no_repeat_ngram_size >= 0, f"{key}.no_repeat_ngram_size", "must be >= 0")
        _options.require(0 <= self.label_smoothing < 1, f"{key}.label_smoothing", "must be in [0, 1)")
        _options.require(self.decoder_layers is None or self.decoder_layers >= 1, f"{key}.decoder_layers", "must be >= 1")
        _options.require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")


@dataclass
class GenerativeModeOptions(TaskOptions):
    """The options of a task that can also answer by writing text (NER, relation extraction: ``mode:
    generative``): which mode, and the GenerationOptions fields its TextGenerator reads in that mode. Set in
    head mode they would do nothing, so they are refused there, naming the key."""

    #: "head": the task's classifier head; "generative": the model writes the answer as text and the task parses it
    #: back (runs on decoder-only backbones through causal-LM fine-tuning, elsewhere through the seq2seq head)
    mode: Literal["head", "generative"] = "head"
    # -- mode=generative only: the GenerationOptions fields of the same names --
    #: target tokens in training
    max_target_length: int = 256
    #: longest output; default max_target_length
    max_new_tokens: Optional[int] = None
    #: 1 = greedy search; more = beam search
    num_beams: int = 1
    #: decoder-only backbones: plain instruction prompt, the tokenizer's chat template, or auto (chat if it has one)
    prompt_format: Literal["auto", "plain", "chat"] = "auto"

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.mode == "generative":
            self.generation_options().validate(key)
            return
        defaults = type(self)()
        for name in GENERATIVE_MODE_FIELDS:
            _options.require(getattr(self, name) == getattr(defaults, name), f"{key}.{name}",
                             "is an option of mode=generative; this task runs mode=head (set mode=generative, or drop it)")

    def generation_options(self) -> GenerationOptions:
        """These options as the GenerationOptions a TextGenerator reads (no T5 prefix: the instruction frames the
        input on a decoder). Built anew on each call, so ``predict --num-beams`` reaches the generator."""
        return GenerationOptions(max_length=self.max_length, encoding=self.encoding, prefix="",
                                 dropout=getattr(self, "dropout", 0.1),
                                 **{name: getattr(self, name) for name in GENERATIVE_MODE_FIELDS})


#: the options that only mode=generative reads
GENERATIVE_MODE_FIELDS = ("max_target_length", "max_new_tokens", "num_beams", "prompt_format")


def pair(source: Any, target: Any, where: tuple[str, int | None], skip_empty: bool,
         target_where: tuple[str, int | None] | None = None) -> dict | None:
    """One example from a source and a target string; None when an empty side is skipped."""
    for side, value, (path, line) in (("source", source, where), ("target", target, target_where or where)):
        if not isinstance(value, str):
            raise DataError(f"expected the {side} text to be a string, got {type(value).__name__}", path, line)
        if not value.strip():
            if skip_empty:
                return None
            raise DataError(f"empty {side} text (use the option skip_empty=true to drop such pairs)", path, line)
    return {"source": source.strip(), "target": target.strip(), "line": where[1]}


def hub_records(rows: Any) -> list[tuple[int, dict]]:
    """(record number, record) pairs of a ``datasets`` split, for the plugins' record readers."""
    return [(i, dict(r)) for i, r in enumerate(rows, 1)]


def warn_skipped(task: str, skipped: int, path: str) -> None:
    if skipped:
        log.warning(f"{task}: {path}: skipped {skipped} pair(s) with an empty source or target (skip_empty=true)")


# ---- (source, target) strings on any backbone --------------------------------------------------------
class TextGenerator:
    """Encoding of (source, target) text pairs, collation, the head and decoding, for any backbone kind.

    A task that wants to generate text holds one and forwards its hooks to it::

        gen = TextGenerator(self.name, self.options, instruction="Translate English to German.",
                            response_cue="German:")
        gen.setup(backbone)                          # in Task.setup
        features = gen.encode(sources, targets)      # targets[i] None: a prediction input (no labels)
        batch = gen.collate(features)                # in Task.collate
        head = gen.build_head(backbone)              # in Task.build_head
        outputs = gen.predict_batch(head, backbone, batch)   # [(ids, hit max_new_tokens)] per row
        text = gen.decode_text(ids)

    ``options`` is a ``GenerationOptions`` (or a subclass): max_length, max_target_length, prefix,
    prompt_format, the decoding settings, label_smoothing and the built decoder's size. A task whose
    options are replaced (``nlpkit predict --num-beams 4`` swaps ``task.options``) assigns the new ones to
    ``gen.options``; they are read at every call, never copied.

    Per backbone kind (``backbone.kind``):
      * encoder-decoder (T5, BART): source = ``prefix + source`` with the tokenizer's own special tokens,
        target in the tokenizer's target format; the model's own decoder (``Seq2SeqHead``).
      * encoder (BERT, the from-scratch presets): the same source, target ``y [EOS]``; a decoder with
        cross-attention is built on the backbone (``Seq2SeqHead``).
      * decoder (Llama, Qwen, Gemma, GPT-2, mini-decoder): causal-LM supervised fine-tuning
        (``CausalSftHead``). The prompt is the source framed by the instruction: ``prompt_format`` plain
        gives ``[BOS] "{instruction}\\n{source}\\n{response_cue}"``, chat gives the tokenizer's chat
        template applied to one user turn ``instruction + "\\n\\n" + source`` with the generation prompt
        (``add_generation_prompt=True``). ``labels`` are the target's tokens (no BOS) + EOS; the loss
        falls on them only. ``max_length`` bounds the whole prompt, and a long source is cut so that
        the template around it stays whole; prompt + target also stay within the model's positions.
        Generation left-pads the prompts and stops at EOS (and at the model's other EOS ids, such as
        Gemma's ``<end_of_turn>``).

    Features are dicts ``{"example_index", "input_ids", "labels"?}``; ``encode`` puts the index of the
    source in "example_index" (a task with several features per example overwrites it). Also there for a
    task to forward: ``feature_length(feature)`` (prompt + target on a decoder: length-grouped batching and
    token counts), ``max_new_tokens``, ``prompt(source)`` (the text a model reads, for logs and docs).
    """

    def __init__(self, task_name: str, options: GenerationOptions, instruction: str, response_cue: str = "",
                 default_prefix: Callable[[Any], str] | None = None):
        self.task_name = task_name
        self.options = options
        self.instruction = instruction
        self.response_cue = response_cue
        #: model config -> the T5-style prefix it expects, for ``prefix: auto`` (encoders, encoder-decoders)
        self.default_prefix = default_prefix or (lambda config: "")
        self.tokenizer: Any = None
        self.kind = ""
        self.prefix = ""

    # ---- set-up ---------------------------------------------------------------------------------------
    def setup(self, backbone: Any) -> None:
        """Read the tokenizer and the special tokens; on a decoder also fix the prompt frame."""
        from .heads.seq2seq import target_tokens

        self.tokenizer, self.kind = backbone.tokenizer, backbone.kind
        self.tokens = target_tokens(backbone)
        if self.kind == "decoder":
            self.stop_ids = stop_ids(backbone, self.tokens.eos)
            self.format = self._prompt_format()
            self.bos, self.head_text, self.tail_text = self._frame()
            self.positions = _positions(backbone.model.config)
            self.prefix = ""
            if self.options.prefix not in ("auto", "", None):
                log.warning(f"{self.task_name}: prefix={self.options.prefix!r} is not used on a decoder-only backbone: "
                            f"the prompt's instruction {self.instruction!r} takes its place")
            self._check_room()
        else:
            prefix = self.options.prefix
            self.prefix = self.default_prefix(backbone.model.config) if prefix == "auto" else (prefix or "")

    def _prompt_format(self) -> str:
        fmt = self.options.prompt_format
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if fmt == "chat" and not has_template:
            raise ConfigError(f"tasks.{self.task_name}.options.prompt_format: chat, but the backbone's tokenizer "
                              "has no chat_template; use prompt_format=plain (or auto)")
        return "chat" if fmt == "chat" or (fmt == "auto" and has_template) else "plain"

    def _frame(self) -> tuple[list[int], str, str]:
        """(ids before the text, text before the source, text after it): the prompt is
        ``bos + tokens(head + source + tail)``."""
        tok = self.tokenizer
        if self.format == "plain":
            head = f"{self.instruction}\n" if self.instruction else ""
            bos = [] if tok.bos_token_id is None else [int(tok.bos_token_id)]  # as causal-lm frames a document
            return bos, head, f"\n{self.response_cue}"
        content = (self.instruction + "\n\n" if self.instruction else "") + SOURCE_SLOT
        text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                       tokenize=False)
        if not isinstance(text, str) or text.count(SOURCE_SLOT) != 1:
            raise ConfigError(f"task {self.task_name!r}: the tokenizer's chat template does not put the message "
                              "text into the prompt as it is; use prompt_format=plain")
        head, tail = text.split(SOURCE_SLOT)
        return [], head, tail  # a chat template writes its own BOS, as apply_chat_template(tokenize=True) has it

    def _check_room(self) -> None:
        """The prompt template alone must leave room for some source within ``prompt_limit``."""
        o, limit = self.options, self.prompt_limit
        template = len(self._tokenize([""])[0][0])
        if template < limit:
            return
        key = f"tasks.{self.task_name}.options"
        if limit < o.max_length:
            raise ConfigError(f"{key}: backbone has {self.positions} positions; after max_target_length="
                              f"{o.max_target_length} / max_new_tokens={self.max_new_tokens} they leave {limit} for "
                              f"the prompt, but its template alone takes {template} tokens: lower max_target_length "
                              f"(and max_new_tokens)")
        raise ConfigError(f"{key}.max_length: {limit} prompt tokens leave no room for the source after the "
                          f"{template}-token prompt template; raise max_length")

    @property
    def max_new_tokens(self) -> int:
        return self.options.max_new_tokens or self.options.max_target_length

    @property
    def prompt_limit(self) -> int:
        """Most prompt tokens: max_length, and on a decoder what leaves room for the target in its positions."""
        limit = self.options.max_length
        if self.kind == "decoder" and self.positions:
            limit = min(limit, self.positions - max(self.options.max_target_length, self.max_new_tokens))
        return limit

    # ---- encoding -------------------------------------------------------------------------------------
    def encode(self, sources: Sequence[str], targets: Sequence[str | None],
               lines: Sequence[Any] | None = None) -> list[dict]:
        """One feature per source: ``input_ids`` (the model's input: a prefixed source or a prompt) and, where
        the target is not None, ``labels``. ``lines`` (file line / record number per pair) only make the
        truncation warnings point at the first long one."""
        if self.kind == "decoder":
            input_ids, long = self._prompt_ids(sources)
        else:
            input_ids, long = self._source_ids(sources)
        if long:
            log.warning(f"{self.task_name}: {len(long)} of {len(sources)} source(s) longer than "
                        f"{self._limit_words()} tokens were truncated{_first_line(lines, long)}")
        features = [{"example_index": i, "input_ids": ids} for i, ids in enumerate(input_ids)]
        self._add_labels(features, targets, lines)
        return features

    def _source_ids(self, sources: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        tok, limit = self.tokenizer, self.options.max_length
        texts = [self.prefix + s for s in sources]
        input_ids = tok(texts)["input_ids"]
        long = [i for i, ids in enumerate(input_ids) if len(ids) > limit]
        if long:
            cut = tok([texts[i] for i in long], truncation=True, max_length=limit)["input_ids"]
            for i, ids in zip(long, cut):
                input_ids[i] = ids
        return input_ids, long

    def _prompt_ids(self, sources: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """The prompts, each cut in its source until it fits ``prompt_limit`` (the template stays whole)."""
        limit = self.prompt_limit
        encoded = self._tokenize(sources)
        out, long = [], []
        for i, (source, (ids, offsets)) in enumerate(zip(sources, encoded)):
            while len(ids) > limit:  # cut the source where its tokens overflow, re-tokenize (merges may shift)
                start = len(self.head_text)
                ends = [e for s, e in offsets if s >= start and start < e <= start + len(source)]
                keep = len(ends) - (len(ids) - limit)
                source = source[: ends[keep - 1] - start] if keep >= 1 else ""
                ids, offsets = self._tokenize([source])[0]
                if i not in long:
                    long.append(i)
                if not source:
                    break
            out.append(ids)
        return out, long

    def _tokenize(self, sources: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """bos + tokens of head + source + tail per source, with each token's character span in that text
        (the BOS of the plain frame at (0, 0))."""
        texts = [self.head_text + s + self.tail_text for s in sources]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        frame = [(0, 0)] * len(self.bos)
        return [(self.bos + list(ids), frame + [tuple(o) for o in offs])
                for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]

    def _limit_words(self) -> str:
        limit, o = self.prompt_limit if self.kind == "decoder" else self.options.max_length, self.options
        if limit == o.max_length:
            return f"max_length={o.max_length}"
        return (f"{limit} (max_length={o.max_length}, lowered so that prompt + target fit the backbone's "
                f"{self.positions} positions)")

    def _add_labels(self, features: list[dict], targets: Sequence[str | None], lines: Sequence[Any] | None) -> None:
        from .heads.seq2seq import target_ids

        labelled = [i for i, t in enumerate(targets) if t is not None]
        if not labelled:
            return
        o = self.options
        labels, cut = target_ids(self.tokenizer, self.kind, [targets[i] for i in labelled], o.max_target_length,
                                 self.tokens.eos)
        for i, ids in zip(labelled, labels):
            features[i]["labels"] = ids
        if cut:
            where = [labelled[k] for k in cut]
            log.warning(f"{self.task_name}: {len(cut)} of {len(labelled)} target(s) longer than "
                        f"max_target_length={o.max_target_length} tokens were truncated for training"
                        f"{_first_line(lines, where)}")

    def feature_length(self, feature: dict) -> int:
        """Tokens the model reads for a feature: on a decoder the prompt and the target, one sequence."""
        n = len(feature["input_ids"])
        return n + len(feature.get("labels", ())) if self.kind == "decoder" else n

    # ---- batches, the head, decoding -------------------------------------------------------------------
    def collate(self, features: Sequence[dict]) -> dict:
        """input_ids + attention_mask (right-padded; left-padded prompts on a decoder, as generation wants
        them) and, when every feature has them, labels padded with -100."""
        from .data import pad, pad_encodings

        batch = pad_encodings(features, self.tokens.pad)
        if self.kind == "decoder":
            from .heads.causal_sft import left_pad

            batch["input_ids"], batch["attention_mask"] = left_pad(batch["input_ids"], batch["attention_mask"],
                                                                   self.tokens.pad)
        if all("labels" in f for f in features):
            batch["labels"] = pad([f["labels"] for f in features], -100)
        return batch

    def build_head(self, backbone: Any) -> Any:
        """``CausalSftHead`` on a decoder-only backbone, else ``Seq2SeqHead``."""
        o = self.options
        if backbone.kind == "decoder":
            from .heads.causal_sft import CausalSftHead

            return CausalSftHead(backbone, o.label_smoothing, self.stop_ids)
        from .heads.seq2seq import Seq2SeqHead

        positions = max(512, o.max_target_length + 1, self.max_new_tokens + 1)
        return Seq2SeqHead(backbone, o.decoder_layers, o.dropout, o.label_smoothing, positions)

    def generate(self, head: Any, backbone: Any, batch: dict) -> Any:
        """The head's ``generate`` with the options' decoding settings: new ids (batch, steps)."""
        o = self.options
        return head.generate(backbone, batch, num_beams=o.num_beams, max_new_tokens=self.max_new_tokens,
                             length_penalty=o.length_penalty, no_repeat_ngram_size=o.no_repeat_ngram_size,
                             early_stopping=o.early_stopping)

    def predict_batch(self, head: Any, backbone: Any, batch: dict) -> list[tuple[list[int], bool]]:
        """Per row: the generated ids up to (without) the first EOS, and whether it ran into max_new_tokens."""
        stops = set(self.stop_ids) if self.kind == "decoder" else {self.tokens.eos}
        pad = self.tokens.pad
        results = []
        for row in self.generate(head, backbone, batch).cpu().tolist():
            end = next((k for k, t in enumerate(row) if t in stops), None)
            if end is not None:
                results.append((row[:end], False))
            else:  # no EOS: generation ran into max_new_tokens (or only padding follows)
                ids = [t for t in row if t != pad] if pad not in stops else row
                results.append((ids, len(row) >= self.max_new_tokens))
        return results

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()

    def prompt(self, source: str) -> str:
        """The text the model reads for ``source`` (for logs and docs; special tokens as text)."""
        if self.kind == "decoder":
            bos = self.tokenizer.decode(self.bos) if self.bos else ""
            return bos + self.head_text + source + self.tail_text
        return self.prefix + source


def stop_ids(backbone: Any, eos: int) -> list[int]:
    """EOS and the model's other end ids (its generation config may list several: Gemma's <end_of_turn>)."""
    ids = {int(eos)}
    config = getattr(backbone.model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    for t in extra if isinstance(extra, (list, tuple)) else [extra]:
        if t is not None:
            ids.add(int(t))
    return sorted(ids)


def _positions(config: Any) -> int | None:
    """Positions a decoder was built for (GPT-2's learned table cannot go past them)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _first_line(lines: Sequence[Any] | None, indices: Sequence[int]) -> str:
    line = lines[indices[0]] if lines is not None and indices else None
    return f" (first at line/record {line})" if line is not None else ""


# ---- the strategy ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Generated:
    """One generated answer: its text, its length in tokens, and whether it ran into max_new_tokens."""

    text: str
    tokens: int
    at_limit: bool


def source_and_target(example: dict) -> tuple[str, Optional[str]]:
    """The default rendering: examples are already ``{"source", "target"?}`` pairs."""
    return example["source"], example.get("target")


def plain_text(example: dict, out: Generated) -> dict[str, Any]:
    """The default parse: the text is the prediction (with its length, for ``TextGeneration.stats``)."""
    return {"text": out.text, "tokens": out.tokens, "at_limit": out.at_limit}


class TextGeneration(Modeling):
    """The model writes text: a ``TextGenerator`` on the task's ``GenerationOptions``, with the task's rendering of
    an example as (source, target) strings and its parse of the generated text back into a prediction.

    ``not_standard``: why no standard transformers model answers like this task (its prediction is parsed from
    nlpkit's own markup); None lets ``nlpkit export`` write the backbone as a standard seq2seq model.
    """

    generates_text = True

    def __init__(self, task_name: str, options: GenerationOptions, *, instruction: str = "", response_cue: str = "",
                 default_prefix: Callable[[Any], str] | None = None,
                 render: Callable[[dict], tuple[str, Optional[str]]] = source_and_target,
                 parse: Callable[[dict, Generated], Any] = plain_text, not_standard: str | None = None):
        self.task_name = task_name
        self.generator = TextGenerator(task_name, options, instruction, response_cue, default_prefix)
        self.render, self.parse, self.not_standard = render, parse, not_standard

    @property
    def options(self) -> GenerationOptions:
        return self.generator.options

    # what `nlpkit export` writes into a standard model's config and generation config
    @property
    def prefix(self) -> str:
        return self.generator.prefix

    @property
    def tokens(self) -> Any:
        return self.generator.tokens

    @property
    def max_new_tokens(self) -> int:
        return self.generator.max_new_tokens

    def texts(self, examples: Sequence[dict]) -> Iterable[str]:
        """Both sides: a from-scratch tokenizer must cover the target language too (byte-level BPE covers the
        prompt's words without seeing them)."""
        for ex in examples:
            source, target = self.render(ex)
            yield source
            if target is not None:
                yield target

    def setup(self, backbone: Any) -> None:
        super().setup(backbone)
        self.generator.setup(backbone)

    def encode(self, examples: Sequence[dict]) -> list[dict]:
        pairs = [self.render(ex) for ex in examples]
        return self.generator.encode([s for s, _ in pairs], [t for _, t in pairs], [ex.get("line") for ex in examples])

    def collate(self, features: Sequence[dict]) -> dict:
        return self.generator.collate(features)

    def feature_length(self, feature: dict) -> int:
        return self.generator.feature_length(feature)

    def build_head(self, backbone: Any) -> Any:
        return self.generator.build_head(backbone)

    def predict_batch(self, head: Any, backbone: Any, batch: dict) -> list[tuple[list[int], bool]]:
        return self.generator.predict_batch(head, backbone, batch)

    def decode(self, examples: Sequence[dict], features: Sequence[dict], outputs: Sequence[Any]) -> list[Any]:
        return [self.parse(ex, Generated(self.generator.decode_text(ids), len(ids), at_limit))
                for ex, (ids, at_limit) in zip(examples, outputs)]

    def export_model(self, backbone: Any, head: Any) -> None:
        if self.not_standard:
            raise NotStandard(self.not_standard)
        return None

    def stats(self, predictions: Sequence[dict]) -> dict[str, Any]:
        """Decoding settings and output lengths, logged with every score: cut outputs ruin BLEU/ROUGE."""
        n = max(1, len(predictions))
        mean = sum(p["tokens"] for p in predictions) / n
        at_limit = 100.0 * sum(bool(p["at_limit"]) for p in predictions) / n
        limit = self.max_new_tokens
        if predictions and mean >= LIMIT_WARN_SHARE * limit:
            log.warning(f"{self.task_name}: mean output length {mean:.1f} tokens is at the limit max_new_tokens={limit} "
                        f"({at_limit:.1f}% of outputs were cut there); scores are likely too low: "
                        f"raise max_new_tokens / max_target_length")
        return {"num_beams": self.options.num_beams, "max_new_tokens": limit, "mean_output_tokens": mean,
                "outputs_at_limit": at_limit}


# ---- hooks that text-pair tasks share ---------------------------------------------------------------
def source_input(item: str | dict) -> dict:
    """A prediction input (text, or a record with "source" or "text") as an example without a target."""
    from .data import input_text

    if isinstance(item, dict):
        item = item.get("source", item.get("text", ""))
    return {"source": input_text(item, "source").strip()}


# ---- the older base class, kept for one release ------------------------------------------------------
class Seq2SeqTask(Task):
    """Deprecated: the base class of text-pair tasks before strategies. A subclass keeps working for one release;
    write ``modeling()`` returning ``TextGeneration`` instead (tasks/translation.py shows how)."""

    Options = GenerationOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        import warnings

        warnings.warn(f"{cls.__qualname__}: Seq2SeqTask goes in the next release; subclass Task and return "
                      "TextGeneration from modeling() (nlpkit.sdk.generation)", DeprecationWarning, stacklevel=2)

    def default_prefix(self, model_config: Any) -> str:
        return ""

    def instruction(self) -> str:
        return ""

    def response_cue(self) -> str:
        return ""

    def modeling(self) -> TextGeneration:
        return TextGeneration(self.name, self.options, instruction=self.instruction(),
                              response_cue=self.response_cue(), default_prefix=self.default_prefix)

    def generation_stats(self, predictions: Sequence[dict]) -> dict[str, Any]:
        return self.strategy.stats(predictions)

    def parse_input(self, item: str | dict) -> dict:
        return source_input(item)

    def format_prediction(self, prediction: dict) -> str:
        return prediction["text"]
