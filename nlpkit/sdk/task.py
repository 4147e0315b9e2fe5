"""The task plugin API.

A task TYPE is a ``Task`` subclass registered under a name (``ner``). A task INSTANCE is one entry of a
run: it has its own name, options, data and label space, so two entries of the same type (two sentiment
datasets with different labels) live side by side, each with its own head.

A plugin has two halves. Its own: files, labels, the metric, raw input. And how its model answers (encode, a head,
decode), which is the same for every task that answers the same way, so a task usually returns a ready strategy for
it from ``modeling()`` (nlpkit.sdk.modeling: a classifier, a word tagger, text generation) instead of writing it.

The core calls these hooks, in this order, and never looks inside examples, features or predictions:

    read(path) -> examples              raw records (dicts) from a file, a list or a generator; errors carry
                                        file:line (the core streams them into a memory-mapped table)
    fit(train_examples)                 learn the label space (saved in the checkpoint via state_dict)
    check(examples, path)               reject what training never saw (e.g. unknown labels)
    texts(examples)                     text for training a from-scratch tokenizer
    special_tokens()                    extra tokens the tokenizer must know (entity markers)
    modeling() -> strategy              how the model answers (called after fit / load_state_dict); the hooks
                                        below forward to it unless the task writes them itself
    setup(backbone)                     keep the tokenizer; called before encode/build_head
    encode(examples) -> features        one or more features per example, each with "example_index" (its
                                        position in the list given); called on batches of ~1,000 examples
    collate(features) -> batch          padded tensors for one batch (dynamic padding)
    build_head(backbone) -> nn.Module   ``head(backbone, batch)`` returns a dict with "loss" when labelled
    predict_batch(head, backbone, batch) -> one raw output per feature (plain Python / CPU tensors)
    decode(examples, features, outputs) -> one prediction per example (JSON-serialisable)
    score(predictions, examples) -> {metric: value}; ``main_score`` names the one used for selection
    parse_input(text_or_record) -> example; format_prediction(prediction) -> str   (for `nlpkit predict`)
    export_model(backbone, head) -> (model, auto class) | None; export_logits, export_tokenizer  (`nlpkit export`)

A minimal plugin writes read, fit, state_dict/load_state_dict (its labels), modeling, score and parse_input.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Optional, Sequence

from . import options as _options
from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from .modeling import Modeling


@dataclass
class TaskOptions:
    """Options every task has; subclasses add their own fields (and may override the defaults)."""

    max_length: int = 256
    #: fraction of the training file held out as dev when no dev file is given (0: none)
    dev_split: float = 0.0
    #: seed of that hold-out, apart from the training seed so runs with other seeds score the same split
    dev_split_seed: int = 0
    #: train on a seeded random sample of this many training examples (after any dev_split; the sample
    #: uses dev_split_seed, so it does not move with the training seed). For learning curves, budgeted
    #: comparisons and quick runs (None: all)
    max_train_examples: Optional[int] = None
    #: text encoding of the data files, used unless a file starts with a byte-order mark (then that
    #: decides); reading stops at the first byte that does not decode (nlpkit.sdk.data explains the policy)
    #: (None: UTF-8, or the format's own encoding where it has one, e.g. Latin-1 for TREC's label-first)
    encoding: Optional[str] = None

    def validate(self, key: str) -> None:
        from .data import check_encoding

        if self.encoding is not None:
            check_encoding(self.encoding, f"{key}.encoding")
        _options.require(8 <= self.max_length <= 100_000, f"{key}.max_length", "must be between 8 and 100000")
        _options.require(0 <= self.dev_split < 1, f"{key}.dev_split", "must be in [0, 1)")
        _options.require(self.max_train_examples is None or self.max_train_examples >= 1,
                         f"{key}.max_train_examples", "must be at least 1")


Example = dict  # a raw record; by convention "line" (or "record") says where it came from
Feature = dict  # an encoded record; must hold "example_index"


class Task:
    #: set by @register_task
    type_name: ClassVar[str] = ""
    #: bump when a change makes old checkpoints of this task load differently
    version: ClassVar[int] = 1
    description: ClassVar[str] = ""
    Options: ClassVar[type] = TaskOptions
    #: the metric used for model selection and early stopping (higher is better)
    main_score: ClassVar[str] = "score"
    #: the dev metric the learning-curve PNG draws when it should not be main_score (pretraining tasks select
    #: by a bounded accuracy but are read by their perplexity); the best step marked stays main_score's
    curve_metric: ClassVar[Optional[str]] = None
    #: backbone kinds this task can run on ("encoder", "encoder-decoder", "decoder")
    backbone_kinds: ClassVar[tuple[str, ...]] = ("encoder", "encoder-decoder")
    #: True when a from-scratch preset learns next to nothing of this task on small data (span extraction,
    #: multiple choice): such a run says so at its start and end and names the flag for a pretrained backbone
    needs_pretrained: ClassVar[bool] = False
    #: fields of a record input that ``nlpkit predict DIR --FIELD VALUE`` may give (``--question Q --context
    #: C``); () means the input is plain text, and any --FIELD is then an unknown flag
    input_fields: ClassVar[tuple[str, ...]] = ()
    #: True: the core keeps this task's examples and features in memory-mapped Arrow tables, cached between runs
    #: (nlpkit.engine.tables), so rows must be JSON-serialisable dicts. False: ``read`` returns the task's own lazy
    #: collection (a pretraining corpus) and ``encode`` gets it whole
    tabular: ClassVar[bool] = True
    #: a few inputs as ``predict`` takes them (text, or a record of ``input_fields``): an export is checked
    #: against the model on them. Empty: the first two examples of the task's default dev data, if any
    sample_inputs: ClassVar[Sequence[Any]] = ()

    def __init__(self, name: str | None = None, options: Any = None):
        self.name = name or self.type_name
        self.options = _options.build(self.Options, options, f"tasks.{self.name}.options")
        self.tokenizer: Any = None

    @property
    def options(self) -> Any:
        return self.__dict__["_options"]

    @options.setter
    def options(self, value: Any) -> None:
        # ``predict(..., num_beams=4)`` swaps the options for one call: the strategy, built from them, is rebuilt
        self.__dict__["_options"] = value
        self.__dict__.pop("_strategy", None)

    def __getstate__(self) -> dict[str, Any]:
        # encoding in worker processes pickles the task: not the backbone it was set up with (the whole model)
        return {k: v for k, v in self.__dict__.items() if k != "_backbone"}

    # ---- data -------------------------------------------------------------------------------------
    def default_data(self) -> dict[str, str]:
        """Embedded data for ``nlpkit train --task NAME`` with no --data: split -> path."""
        return {}

    def read(self, path: str) -> Iterable[Example]:
        """The examples of a file, in order: a list, or a generator so that a large file never sits in memory."""
        raise NotImplementedError

    def read_hub(self, rows: Any, spec: str) -> Iterable[Example]:
        """Examples from rows of a ``datasets`` table: a hub split (``hub:DATASET:SPLIT``), a Parquet or Arrow
        file, or a folder written by ``save_to_disk``; one column layout for all of them."""
        raise ConfigError(f"task {self.name!r} cannot read hub datasets ({spec}); give local files instead")

    def fit(self, train_examples: Sequence[Example]) -> None:
        """Learn what the data defines (labels). Must be deterministic: every process calls it."""

    def check(self, examples: Sequence[Example], path: str) -> None:
        """Reject evaluation data the model cannot score (a label never seen in training)."""

    def texts(self, examples: Sequence[Example]) -> Iterable[str]:
        """Text used to train a tokenizer for a from-scratch backbone (default: the text the strategy reads)."""
        if self.strategy is None:
            raise NotImplementedError(f"task {self.name!r} cannot train a tokenizer: texts() is not implemented")
        return self.strategy.texts(examples)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state saved in nlpkit.json (label maps)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # ---- model ------------------------------------------------------------------------------------
    def special_tokens(self) -> list[str]:
        return []

    def modeling(self) -> Optional["Modeling"]:
        """How this task's model answers: a strategy from nlpkit.sdk.modeling (or the task's own ``Modeling``
        subclass), built from the labels and options. None: the task writes encode ... decode itself."""
        return None

    @property
    def strategy(self) -> Optional["Modeling"]:
        """The strategy of ``modeling()``, set up with the backbone once ``setup`` has run."""
        if "_strategy" in self.__dict__:
            return self.__dict__["_strategy"]
        strategy = self.modeling()
        backbone = self.__dict__.get("_backbone")
        if strategy is None or backbone is None:
            # not set up yet: a fresh one each time (the labels may still change), with whatever tokenizer the
            # task was given (a tool or test that encodes with a bare tokenizer)
            if strategy is not None:
                strategy.tokenizer, strategy.backbone_kind = self.tokenizer, getattr(self, "backbone_kind", None)
            return strategy
        strategy.setup(backbone)
        self.__dict__["_strategy"] = strategy
        return strategy

    @property
    def generative(self) -> bool:
        """True when the model writes text (it needs a decoder; ``predict --num-beams`` applies): the strategy
        says so, or the task itself (a class attribute ``generative = True`` of a task without a strategy)."""
        if "_generative" in self.__dict__:
            return self.__dict__["_generative"]
        return bool(getattr(self.strategy, "generates_text", False))

    @generative.setter
    def generative(self, value: bool) -> None:
        self.__dict__["_generative"] = bool(value)

    def _forward(self, hook: str) -> "Modeling":
        strategy = self.strategy
        if strategy is None:
            raise NotImplementedError(f"task {self.name!r}: return a strategy from modeling() or implement {hook}()")
        return strategy

    def setup(self, backbone: Any) -> None:
        self.tokenizer = backbone.tokenizer
        self.backbone_kind = backbone.kind
        self.__dict__["_backbone"] = backbone
        self.__dict__.pop("_strategy", None)  # built anew: fit / load_state_dict may have changed the labels
        _ = self.strategy

    def encode(self, examples: Sequence[Example]) -> list[Feature]:
        """Features of a batch of examples. Must not depend on which other examples share the batch: the core
        encodes a split a batch at a time (and in several processes), and caches the result."""
        return self._forward("encode").encode(examples)

    def collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        return self._forward("collate").collate(features)

    def feature_length(self, feature: Feature) -> int:
        """Length used for length-grouped batching and token counts."""
        strategy = self.strategy
        return strategy.feature_length(feature) if strategy is not None else len(feature["input_ids"])

    def feature_lengths(self, features: Sequence[Feature]) -> Sequence[int]:
        """Every feature's length at once: a task whose features are a lazy Sequence (pretraining blocks in a
        memory-mapped cache) answers from an array instead of building each feature; so does a table of
        features (nlpkit.engine.tables), whose lengths were stored when it was encoded."""
        stored = getattr(features, "lengths", None)
        if callable(stored):
            return stored()
        return [self.feature_length(f) for f in features]

    def describe_features(self, features: Sequence[Feature]) -> Optional[str]:
        """A line the run's log prints about a split's features (a pretraining corpus: its token count and
        cache); None says nothing."""
        return None

    def build_head(self, backbone: Any) -> Any:
        return self._forward("build_head").build_head(backbone)

    def predict_batch(self, head: Any, backbone: Any, batch: dict[str, Any]) -> list[Any]:
        return self._forward("predict_batch").predict_batch(head, backbone, batch)

    def decode(self, examples: Sequence[Example], features: Sequence[Feature], outputs: Sequence[Any]) -> list[Any]:
        return self._forward("decode").decode(examples, features, outputs)

    def score(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, Any]:
        raise NotImplementedError

    # ---- prediction from the command line / Python ------------------------------------------------
    def parse_input(self, item: str | dict) -> Example:
        raise NotImplementedError

    def format_prediction(self, prediction: Any) -> str:
        import json

        return json.dumps(prediction, ensure_ascii=False)

    # ---- export -----------------------------------------------------------------------------------
    def export_model(self, backbone: Any, head: Any) -> Optional[tuple[Any, str]]:
        """A plain transformers model computing what ``head(backbone, ...)`` computes, and the name of the Auto
        class that loads it (``"AutoModelForMaskedLM"``), for ``nlpkit export --format transformers``.

        The core knows how to map its shared heads, not a plugin's own head: a task whose head is a standard
        head in disguise says so here. None (the default) leaves the export to the core (its mapping of the
        shared heads, else the backbone + heads fallback). A task that returns a model implements
        ``export_logits`` too: the core compares the two before anything is written. The default asks the
        task's strategy, if any.
        """
        strategy = self.strategy
        return strategy.export_model(backbone, head) if strategy is not None else None

    def export_logits(self, backbone: Any, head: Any, batch: dict[str, Any]) -> Any:
        """nlpkit's own logits (batch, length, classes) for ``batch`` (``input_ids``, ``attention_mask``), at
        every position and without training-time noise such as masking: the reference that the exported
        model's ``.logits`` must match within the export tolerance at the real (unpadded) positions."""
        if self.strategy is not None:
            return self.strategy.export_logits(backbone, head, batch)
        raise NotImplementedError(f"task {self.name!r} returned a model from export_model but has no export_logits "
                                  "to check it against")

    def export_tokenizer(self, tokenizer: Any) -> Any:
        """The tokenizer saved beside the model of ``export_model``: the backbone's as it is (the default), or a
        changed copy (never the backbone's own) with which transformers' ``pipeline()`` turns raw input into
        the ids this task's ``encode`` gives, where the task adds or strips tokens of its own."""
        strategy = self.strategy
        return strategy.export_tokenizer(tokenizer) if strategy is not None else tokenizer

    # ---- helpers for subclasses -------------------------------------------------------------------
    def options_dict(self) -> dict[str, Any]:
        return _options.to_dict(self.options)

    @staticmethod
    def check_labels(
        examples: Sequence[Example], known: Iterable[str], field: str, path: str, what: str = "label"
    ) -> None:
        """Raise DataError at the first example whose ``field`` (a label or list of labels) is unknown."""
        known = set(known)
        for ex in examples:
            values = ex[field]
            for value in values if isinstance(values, (list, tuple)) else [values]:
                if value not in known:
                    raise DataError(
                        f"{what} {value!r} never occurred in the training data (known: {', '.join(sorted(known))})",
                        path,
                        ex.get("line"),
                    )


def replace_options(task: Task, **changes: Any) -> None:
    task.options = dataclasses.replace(task.options, **changes)
