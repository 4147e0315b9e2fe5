"""Extractive question answering (SQuAD v1.1 / v2.0): find the answer's character span in a context.

Long contexts are cut into overlapping windows of ``max_length`` tokens (``doc_stride`` tokens shared
by neighbouring windows); each window is one feature. For training, a window that does not contain the
whole answer is labelled with its [CLS] position, as transformers' run_qa.py does. For prediction the
best spans of all windows of a question compete together, so an answer late in a long context is found
in whichever window holds it. The SQuAD reader and the official metric live in ``squad.py`` beside this.
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import torch

from nlpkit import DataError, Task, TaskOptions, register_task
from nlpkit.sdk.data import pad_encodings
from nlpkit.sdk.modeling import Modeling
from nlpkit.sdk.options import require

from .. import DATA_DIR
from .squad import (make_example, normalize_answer, read_hub_rows, read_squad,
                    squad_scores)

__all__ = ["QaTask", "QaOptions", "read_squad", "normalize_answer", "squad_scores"]


@dataclass
class QaOptions(TaskOptions):
    max_length: int = 384
    #: tokens shared by two neighbouring windows of a long context (default: max_length // 3, 128 for 384)
    doc_stride: Optional[int] = None
    #: cut contexts longer than one window into several; false makes such a context an error
    windows: bool = True
    #: questions are cut to this many tokens (default: max_length // 6, 64 for 384)
    max_query_length: Optional[int] = None
    #: longest answer, in tokens
    max_answer_length: int = 30
    #: best start and end positions kept per window when searching spans
    n_best: int = 20
    #: allow "no answer" (SQuAD v2.0); auto: when the training data has unanswerable questions
    no_answer: Literal["auto", "yes", "no"] = "auto"
    #: answer "" when (no-answer score - best span score) is above this; tune it on dev (best_f1_thresh)
    null_score_diff_threshold: float = 0.0
    dropout: float = 0.1

    @property
    def stride(self) -> int:
        return self.max_length // 3 if self.doc_stride is None else self.doc_stride

    @property
    def query_length(self) -> int:
        return self.max_length // 6 if self.max_query_length is None else self.max_query_length

    def validate(self, key: str) -> None:
        super().validate(key)
        require(self.stride >= 0, f"{key}.doc_stride", "must be >= 0")
        require(self.query_length >= 1, f"{key}.max_query_length", "must be >= 1")
        require(self.stride + self.query_length + 4 <= self.max_length, f"{key}.doc_stride",
                f"doc_stride ({self.stride}) + max_query_length ({self.query_length}) + 4 must not exceed "
                f"max_length ({self.max_length}): each window needs new context")
        require(self.max_answer_length >= 1, f"{key}.max_answer_length", "must be >= 1")
        require(self.n_best >= 1, f"{key}.n_best", "must be >= 1")


@register_task("qa")
class QaTask(Task):
    sample_inputs = [{"question": "Who visited Paris?", "context": "Angela Merkel visited Paris in the spring of 2019."},
                     {"question": "Where did the team play?", "context": "The team played in Rome and won the final match."}]
    description = "extractive question answering (SQuAD v1.1/v2.0 JSON or JSONL; exact match and F1)"
    Options = QaOptions
    main_score = "f1"
    input_fields = ("question", "context", "id", "title")  # nlpkit predict DIR --question Q --context C
    needs_pretrained = True  # span extraction from scratch on the bundled data: EM near 16
    #: on a decoder the start/end scores of a context token see only what precedes it (the question and the
    #: context before it): docs/llm.md shows what that costs
    backbone_kinds = ("encoder", "encoder-decoder", "decoder")

    def __init__(self, name=None, options=None):
        super().__init__(name, options)
        self.no_answer = self.options.no_answer == "yes"

    # ---- data ----------------------------------------------------------------------------------------
    def default_data(self) -> dict[str, str]:
        return {"train": str(DATA_DIR / "qa" / "train.json"), "dev": str(DATA_DIR / "qa" / "dev.json")}

    def read(self, path: str) -> list[dict]:
        return read_squad(path, self.options.encoding)

    def read_hub(self, rows, spec: str) -> list[dict]:
        return read_hub_rows(rows, spec)

    def fit(self, train_examples: Sequence[dict]) -> None:
        if self.options.no_answer == "auto":
            self.no_answer = any(ex["impossible"] for ex in train_examples)
        else:
            self.no_answer = self.options.no_answer == "yes"

    def check(self, examples: Sequence[dict], path: str) -> None:
        if self.no_answer:
            return
        for ex in examples:
            if ex.get("impossible"):
                raise DataError(f"{_where(ex)}: this question has no answer, but the model was trained without "
                                "unanswerable questions (SQuAD v1.1); train with --option no_answer=yes", path,
                                ex.get("line"))

    def texts(self, examples: Sequence[dict]):
        seen: set[str] = set()
        for ex in examples:
            yield ex["question"]
            if ex["context"] not in seen:  # SQuAD repeats each paragraph for all of its questions
                seen.add(ex["context"])
                yield ex["context"]

    def state_dict(self) -> dict[str, Any]:
        return {"no_answer": self.no_answer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.no_answer = bool(state["no_answer"])

    # ---- the model: start and end scores per context token ---------------------------------------------
    def modeling(self) -> Modeling:
        return SpanPicker(self.options, self.no_answer)

    # ---- scoring -------------------------------------------------------------------------------------
    def score(self, predictions, examples) -> dict[str, Any]:
        golds = [[a["text"] for a in ex["answers"]] for ex in examples]
        answers = [p["answer"] for p in predictions]
        if not self.no_answer:
            return squad_scores(answers, golds, v2=False)
        diffs = [math.inf if p.get("null_score_diff") is None else p["null_score_diff"] for p in predictions]
        spans = [p["best_span"]["answer"] for p in predictions]
        return squad_scores(answers, golds, v2=True, null_score_diffs=diffs, best_spans=spans)

    # ---- raw input -----------------------------------------------------------------------------------
    def parse_input(self, item) -> dict:
        if not isinstance(item, dict):
            raise DataError("qa needs a question and a context: nlpkit predict DIR --question '...' --context "
                            "'...', or JSON lines {\"question\": ..., \"context\": ...} on stdin")
        return make_example(item, "<input>", None, None, str(item.get("id", "0")), labelled=False)

    def format_prediction(self, prediction: dict) -> str:
        if prediction["start"] is None:
            return f"(no answer)  ({prediction['score']:.2f})"
        return f"{prediction['answer']}  [{prediction['start']}:{prediction['end']}]  ({prediction['score']:.2f})"


class SpanPicker(Modeling):
    """Question + context windows (``doc_stride`` apart) to start/end scores per context token; the best span over
    all windows of a question, weighed against "no answer" when the model was trained with unanswerable ones."""

    def __init__(self, options: QaOptions, no_answer: bool):
        self.options, self.no_answer = options, no_answer

    def _clip_question(self, question: str) -> str:
        """Leading blanks dropped (some SQuAD questions have many) and cut to max_query_length tokens."""
        question = question.lstrip()
        enc = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > self.options.query_length:
            question = question[: enc["offset_mapping"][self.options.query_length - 1][1]]
        return question

    def encode(self, examples: Sequence[dict]) -> list[dict]:
        o = self.options
        enc = self.tokenizer([self._clip_question(ex["question"]) for ex in examples],
                             [ex["context"] for ex in examples], truncation="only_second", max_length=o.max_length,
                             stride=o.stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        features, windows = [], defaultdict(int)
        for i, ids in enumerate(enc["input_ids"]):
            ex_i = enc["overflow_to_sample_mapping"][i]
            ex = examples[ex_i]
            windows[ex_i] += 1
            if windows[ex_i] > 1 and not o.windows:
                raise DataError(f"{_where(ex)}: the context does not fit in one window of max_length "
                                f"{o.max_length} tokens and windows are off (--option windows=true to split it, "
                                "or raise max_length)", ex.get("path"), ex.get("line"))
            sequence_ids = enc.sequence_ids(i)
            # character offsets of context tokens only: spans can never start in the question
            offsets = [tuple(off) if s == 1 else None for off, s in zip(enc["offset_mapping"][i], sequence_ids)]
            cls_index = ids.index(self.tokenizer.cls_token_id) if self.tokenizer.cls_token_id in ids else 0
            feature = {"example_index": ex_i, "window": windows[ex_i] - 1, "input_ids": ids,
                       "offsets": offsets, "cls_index": cls_index}
            if "token_type_ids" in enc:
                feature["token_type_ids"] = enc["token_type_ids"][i]
            if "answers" in ex:
                feature["start_positions"], feature["end_positions"] = _label(ex, offsets, cls_index)
            features.append(feature)
        return features

    def collate(self, features: Sequence[dict]) -> dict:
        batch = pad_encodings(features, self.tokenizer.pad_token_id, keys=("input_ids", "token_type_ids"))
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
        return batch

    def build_head(self, backbone):
        from nlpkit.sdk.heads import SpanExtractionHead

        return SpanExtractionHead(backbone.hidden_size, self.options.dropout)

    def predict_batch(self, head, backbone, batch) -> list:
        out = head(backbone, {k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")})
        lengths = batch["attention_mask"].sum(1).tolist()
        starts, ends = out["start_logits"].cpu().tolist(), out["end_logits"].cpu().tolist()
        return [(starts[i][:n], ends[i][:n]) for i, n in enumerate(lengths)]

    def decode(self, examples, features, outputs) -> list[dict]:
        per_example: dict[int, list] = defaultdict(list)
        for feature, output in zip(features, outputs):
            per_example[feature["example_index"]].append((feature, output))
        return [self._decode_one(ex, per_example[i]) for i, ex in enumerate(examples)]

    def _decode_one(self, ex: dict, windows: list) -> dict:
        """The best span over all windows of one question; for v2.0, weighed against "no answer"."""
        o, context = self.options, ex["context"]
        null_score, spans = math.inf, {}
        for feature, (start_logits, end_logits) in windows:
            cls = feature["cls_index"]
            null_score = min(null_score, start_logits[cls] + end_logits[cls])  # the least confident window
            offsets = feature["offsets"]
            top_starts = heapq.nlargest(o.n_best, range(len(start_logits)), key=start_logits.__getitem__)
            top_ends = heapq.nlargest(o.n_best, range(len(end_logits)), key=end_logits.__getitem__)
            for s in top_starts:
                for e in top_ends:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > o.max_answer_length:
                        continue
                    a, b = _strip(context, offsets[s][0], offsets[e][1])
                    if a >= b:
                        continue
                    score = start_logits[s] + end_logits[e]
                    if score > spans.get((a, b), -math.inf):  # the same span seen by overlapping windows
                        spans[(a, b)] = score
        ranked = heapq.nlargest(o.n_best, spans.items(), key=lambda kv: kv[1])
        scores = [score for _, score in ranked] + ([null_score] if self.no_answer and windows else [])
        probs = _softmax(scores)
        pred: dict[str, Any] = {"id": ex.get("id"), "answer": "", "start": None, "end": None, "score": 0.0}
        if ranked:
            (a, b), best = ranked[0]
            pred.update(answer=context[a:b], start=a, end=b, score=round(probs[0], 6))
        if self.no_answer:
            diff = null_score - ranked[0][1] if ranked else None
            best_span = {k: pred[k] for k in ("answer", "start", "end")}
            if diff is None or diff > o.null_score_diff_threshold:
                pred.update(answer="", start=None, end=None, score=round(probs[-1], 6) if probs else 1.0)
            pred["null_score_diff"] = round(diff, 6) if diff is not None else None
            pred["best_span"] = best_span
        return pred


# ---- helpers ---------------------------------------------------------------------------------------
def _where(ex: dict) -> str:
    return f"record {ex['record']} (id {ex['id']!r})" if "record" in ex else f"question id {ex['id']!r}"


def _label(ex: dict, offsets: list, cls_index: int) -> tuple[int, int]:
    """Token start/end of the first gold answer in this window, or (cls, cls) when the window does not
    hold all of it (or the question has no answer)."""
    if not ex["answers"]:
        return cls_index, cls_index
    answer = ex["answers"][0]
    start_char = answer["answer_start"]
    end_char = start_char + len(answer["text"])
    context = [i for i, off in enumerate(offsets) if off is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return cls_index, cls_index
    start = next(i for i in context if offsets[i][1] > start_char)  # first token reaching into the answer
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)  # last token starting inside it
    return start, max(start, end)


def _strip(context: str, a: int, b: int) -> tuple[int, int]:
    """Span offsets without surrounding white space (byte-level BPE tokens may carry a leading space)."""
    while a < b and context[a].isspace():
        a += 1
    while b > a and context[b - 1].isspace():
        b -= 1
    return a, b


def _softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]
