"""How a task's model answers: the strategies a task returns from ``Task.modeling()``.

A plugin has two halves. One is its own: files, the label space, the metric, raw input (``read``, ``fit``,
``score``, ``parse_input``). The other is how a model turns examples into predictions: encode, collate, a head
on the backbone, the raw outputs of a batch, and decoding them back into predictions. That second half is the
same for every task that answers the same way, so it is an object of its own, a strategy:

  * ``SequenceClassifier``: one label (or several) per text or text pair;
  * ``WordTagger``: one label per word of a pre-split sentence (a POS tagger; NER uses it);
  * ``TextGeneration`` (nlpkit.sdk.generation): the model writes text; the task renders an example as
    (source, target) strings and parses the generated text back (translation, summarization, generative NER).

A task returns one from ``modeling()``; ``Task``'s own ``encode``/``collate``/``build_head``/``predict_batch``/
``decode`` and export hooks forward to it. A task whose model answers in a way no strategy covers writes those
hooks itself (a subclass of ``Modeling`` in the plugin file is the tidy way; overriding the Task hooks directly
still works).

A strategy is built after ``fit``/``load_state_dict`` (it may read the labels) and rebuilt when the task's options
are replaced (``predict(..., num_beams=4)``), so it can take plain values and never goes stale.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, Iterable, Optional, Sequence

Example = dict
Feature = dict


class Modeling:
    """The model half of a task: examples -> features -> batches -> head outputs -> predictions."""

    #: True when the model writes text: it needs a decoder, and ``predict --num-beams`` applies
    generates_text: ClassVar[bool] = False

    def setup(self, backbone: Any) -> None:
        """Keep what encoding and decoding need from the backbone (its tokenizer and kind)."""
        self.tokenizer = backbone.tokenizer
        self.backbone_kind = backbone.kind

    def texts(self, examples: Sequence[Example]) -> Iterable[str]:
        """The text the model reads, for training a from-scratch tokenizer (before any ``setup``)."""
        raise NotImplementedError(f"{type(self).__name__} does not say which text it reads: implement the task's "
                                  "texts()")

    def encode(self, examples: Sequence[Example]) -> list[Feature]:
        """Features of a batch of examples, each with "example_index" (its position in ``examples``)."""
        raise NotImplementedError

    def collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        raise NotImplementedError

    def feature_length(self, feature: Feature) -> int:
        """Tokens the model reads for a feature (length-grouped batching, token counts)."""
        return len(feature["input_ids"])

    def build_head(self, backbone: Any) -> Any:
        raise NotImplementedError

    def predict_batch(self, head: Any, backbone: Any, batch: dict[str, Any]) -> list[Any]:
        """One raw output per feature, as plain Python (decode gets them back with their features)."""
        raise NotImplementedError

    def decode(self, examples: Sequence[Example], features: Sequence[Feature], outputs: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    # -- export: the defaults leave it to the core's mapping of the shared heads (see Task.export_model) --
    def export_model(self, backbone: Any, head: Any) -> Optional[tuple[Any, str]]:
        return None

    def export_logits(self, backbone: Any, head: Any, batch: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} returned a model from export_model but has no "
                                  "export_logits to check it against")

    def export_tokenizer(self, tokenizer: Any) -> Any:
        return tokenizer


# ---- one label per text ---------------------------------------------------------------------------
class SequenceClassifier(Modeling):
    """Examples ``{text_field: str, pair_field?: str, label_field?: str | list[str]}`` to predictions
    ``{"label", "probability", "probabilities"}`` (single-label) or ``{"labels", "probabilities"}`` (multi-label).

    ``label_ids(example)`` gives an example's class indices; the default looks ``label_field`` up in ``labels``.
    A task that renames raw labels (sentiment's ``pos`` -> ``positive``) passes its own.
    """

    def __init__(self, labels: Sequence[str], *, max_length: int = 128, pair: bool = False,
                 multi_label: bool = False, threshold: float = 0.5, pooling: str = "auto", dropout: float = 0.1,
                 text_field: str = "text", pair_field: str = "pair", label_field: str = "label",
                 label_ids: Callable[[Example], list[int]] | None = None):
        self.labels = list(labels)
        self.max_length, self.pair, self.multi_label, self.threshold = max_length, pair, multi_label, threshold
        self.pooling, self.dropout = pooling, dropout
        self.text_field, self.pair_field, self.label_field = text_field, pair_field, label_field
        index = {label: i for i, label in enumerate(self.labels)}
        self.label_ids = label_ids or (lambda ex: [index[v] for v in _as_list(ex[label_field])])

    def texts(self, examples: Sequence[Example]) -> Iterable[str]:
        for ex in examples:
            yield ex[self.text_field]
            if self.pair_field in ex:
                yield ex[self.pair_field]

    def encode(self, examples: Sequence[Example]) -> list[Feature]:
        texts = [ex[self.text_field] for ex in examples]
        pairs = [ex[self.pair_field] for ex in examples] if self.pair else None
        # segment ids tell the two texts apart (not every tokenizer returns them unasked); one text needs none,
        # and the collator builds the attention mask: asking for ids alone makes encoding a third faster
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length,
                             return_token_type_ids=self.pair, return_attention_mask=False)
        features = []
        for i, ex in enumerate(examples):
            feature = {"example_index": i, "input_ids": enc["input_ids"][i]}
            if "token_type_ids" in enc:
                feature["token_type_ids"] = enc["token_type_ids"][i]
            if self.label_field in ex:
                ids = self.label_ids(ex)
                feature["labels"] = [1.0 if j in ids else 0.0 for j in range(len(self.labels))] \
                    if self.multi_label else ids[0]
            features.append(feature)
        return features

    def collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        import torch

        from .data import pad_encodings

        batch = pad_encodings(features, self.tokenizer.pad_token_id, keys=("input_ids", "token_type_ids"))
        if "labels" in features[0]:
            dtype = torch.float if self.multi_label else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch

    def build_head(self, backbone: Any) -> Any:
        from .heads.classification import (SequenceClassificationHead,
                                           resolve_pooling)

        return SequenceClassificationHead(backbone.hidden_size, len(self.labels), self.dropout,
                                          resolve_pooling(self.pooling, backbone.kind), multi_label=self.multi_label)

    def predict_batch(self, head: Any, backbone: Any, batch: dict[str, Any]) -> list[list[float]]:
        logits = head(backbone, batch)["logits"].float()
        probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
        return probs.cpu().tolist()

    def decode(self, examples: Sequence[Example], features: Sequence[Feature],
               outputs: Sequence[list[float]]) -> list[dict]:
        preds = []
        for probs in outputs:
            table = {label: round(p, 4) for label, p in zip(self.labels, probs)}
            if self.multi_label:
                chosen = sorted((label for label, p in zip(self.labels, probs) if p >= self.threshold),
                                key=lambda label: -table[label])
                preds.append({"labels": chosen, "probabilities": table})
            else:
                best = max(range(len(probs)), key=probs.__getitem__)
                preds.append({"label": self.labels[best], "probability": round(probs[best], 4),
                              "probabilities": table})
        return preds


# ---- one label per word ---------------------------------------------------------------------------
class WordTagger(Modeling):
    """Sentences given as words (``{words_field: [...], tags_field?: [...]}``) to one tag per word: the tag of a
    word's first sub-token is trained and read; words that truncation cut off are tagged ``labels[0]``.

    ``prediction(example, tags, scores)`` turns a sentence's tags and their probabilities into the prediction
    (the default: ``{"tags": tags}``); NER adds entity spans with character offsets there.
    """

    def __init__(self, labels: Sequence[str], *, max_length: int = 256, dropout: float = 0.1,
                 words_field: str = "tokens", tags_field: str = "tags", task_name: str = "",
                 prediction: Callable[[Example, list[str], list[float]], Any] | None = None,
                 log: logging.Logger | None = None):
        self.labels = list(labels)
        self.max_length, self.dropout = max_length, dropout
        self.words_field, self.tags_field, self.task_name = words_field, tags_field, task_name
        #: where the truncation warning goes (the plugin's own logger, so its users can filter it)
        self.log = log or logging.getLogger("nlpkit.modeling")
        self.prediction = prediction or (lambda ex, tags, scores: {"tags": tags})

    def texts(self, examples: Sequence[Example]) -> Iterable[str]:
        return (" ".join(s[self.words_field]) for s in examples)

    def encode(self, examples: Sequence[Example]) -> list[Feature]:
        from .data import encode_words

        label_id = {t: i for i, t in enumerate(self.labels)}
        # ids and word ids only: the collator builds the attention mask (a third fewer lists to make)
        all_ids, all_word_ids = encode_words(self.tokenizer, [s[self.words_field] for s in examples], self.max_length)
        features, cut = [], []
        for i, (s, ids, word_ids) in enumerate(zip(examples, all_ids, all_word_ids)):
            if self._was_cut(s, word_ids, len(ids)):
                cut.append(i)
            feature = {"example_index": i, "input_ids": ids, "word_ids": word_ids}
            if self.tags_field in s:  # a word's tag on its first piece; -100 (not trained on) elsewhere
                tag_ids = [label_id[t] for t in s[self.tags_field]]
                feature["labels"] = [tag_ids[w] if w is not None and w != prev else -100
                                     for w, prev in zip(word_ids, [None, *word_ids])]
            features.append(feature)
        if cut:
            line = examples[cut[0]].get("line")
            self.log.warning(f"{self.task_name}: {len(cut)} of {len(examples)} sentence(s) longer than max_length="
                             f"{self.max_length} tokens were cut: their last words are not trained on and are "
                             f"predicted {self.labels[0]}" + (f" (first at line {line})" if line is not None else "")
                             + "; raise the option max_length")
        return features

    def _was_cut(self, sentence: Example, word_ids: Sequence[int | None], length: int) -> bool:
        """Truncation dropped words: the encoding is full and its last word is not the sentence's last."""
        if length < self.max_length:
            return False
        return max((w for w in word_ids if w is not None), default=-1) < len(sentence[self.words_field]) - 1

    def collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        from .data import pad, pad_encodings

        batch = pad_encodings(features, self.tokenizer.pad_token_id)
        if "labels" in features[0]:
            batch["labels"] = pad([f["labels"] for f in features], -100)
        return batch

    def build_head(self, backbone: Any) -> Any:
        from .heads.token_classification import TokenClassificationHead

        return TokenClassificationHead(backbone.hidden_size, len(self.labels), self.dropout)

    def predict_batch(self, head: Any, backbone: Any, batch: dict[str, Any]) -> list[tuple[list[int], list[float]]]:
        logits = head(backbone, batch)["logits"].float()
        probs, ids = logits.softmax(-1).max(-1)
        lengths = batch["attention_mask"].sum(1).tolist()
        ids, probs = ids.cpu().tolist(), probs.cpu().tolist()
        return [(ids[i][:n], probs[i][:n]) for i, n in enumerate(lengths)]

    def decode(self, examples: Sequence[Example], features: Sequence[Feature], outputs: Sequence[Any]) -> list[Any]:
        preds = []
        for ex, feat, (ids, probs) in zip(examples, features, outputs):
            n = len(ex[self.words_field])
            tags, scores, prev = [self.labels[0]] * n, [1.0] * n, None
            for pos, w in enumerate(feat["word_ids"]):
                if w is not None and w != prev:  # words cut by truncation keep labels[0]
                    tags[w], scores[w] = self.labels[ids[pos]], probs[pos]
                prev = w
            preds.append(self.prediction(ex, tags, scores))
        return preds


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]

