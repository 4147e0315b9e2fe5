"""SQuAD data and scoring: the v1.1 / v2.0 JSON release layout, JSONL, hub rows, and the official metric.

The metric is written anew here, but follows the official scripts (evaluate-v1.1.py, evaluate-v2.0.py)
rule for rule so the numbers are the same: lower-case, drop ASCII punctuation, replace the articles
a/an/the by a space, collapse white space; exact match and bag-of-tokens F1, each the maximum over the
gold answers, averaged over questions and given in percent.
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from nlpkit import DataError
from nlpkit.sdk.data import open_text, read_jsonl

# ---- reading ---------------------------------------------------------------------------------------


def read_squad(path: str, encoding: str = "utf-8") -> list[dict]:
    """Questions of a SQuAD JSON file (data → paragraphs → qas) or of a JSONL file (one per line).

    ``.json`` files must be the SQuAD layout and ``.jsonl`` files one question per line; for other names
    the content decides. Every answer's ``answer_start`` must point at its text in the context.
    """
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        return _read_jsonl(path, encoding)
    with open_text(path, encoding) as f:
        text = f.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if name.endswith(".json"):
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path, exc.lineno) from None
        return _read_jsonl(path, encoding)  # several objects, one per line
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", path) from None
    if isinstance(document, dict) and "data" in document:
        return _read_squad_document(document, path)
    if name.endswith(".json"):
        raise DataError("expected the SQuAD layout: an object with \"data\": [{\"paragraphs\": [{\"context\", "
                        "\"qas\": [...]}]}]", path)
    return _read_jsonl(path, encoding)


def _read_squad_document(document: dict, path: str) -> list[dict]:
    version = str(document.get("version", "")).lstrip("v")
    v1 = version.startswith("1")
    examples: list[dict] = []
    articles = document["data"]
    if not isinstance(articles, list):
        raise DataError("\"data\" must be a list of articles", path)
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"record data[{a}]: expected a \"paragraphs\" list", path)
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise DataError(f"record {where}: expected an object with \"context\" and a \"qas\" list", path)
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise DataError(f"record {where}.qas[{q}]: expected an object", path)
                record = {"context": paragraph.get("context"), "title": article.get("title"), **qa}
                ex = make_example(record, path, f"{where}.qas[{q}]", None, str(len(examples)))
                if v1 and ex["impossible"]:
                    raise DataError(f"record {ex['record']}: no answers, but SQuAD v{version} needs at least one "
                                    "(unanswerable questions belong in the v2.0 layout)", path)
                examples.append(ex)
    return examples


def _read_jsonl(path: str, encoding: str = "utf-8") -> list[dict]:
    return [make_example(record, path, None, lineno, str(i))
            for i, (lineno, record) in enumerate(read_jsonl(path, encoding))]


def read_hub_rows(rows: Iterable[dict], spec: str) -> list[dict]:
    """Rows of the Hugging Face ``squad`` / ``squad_v2`` datasets (answers as parallel lists)."""
    return [make_example(dict(row), spec, f"row {i}", None, str(i)) for i, row in enumerate(rows)]


def make_example(record: dict, path: str, record_name: str | None, line: int | None, default_id: str,
                 labelled: bool = True) -> dict:
    """Check one question record and turn it into an example.

    ``answers`` is a list of ``{"text", "answer_start"}`` or the Hugging Face form
    ``{"text": [...], "answer_start": [...]}``; an empty list (or ``is_impossible: true``) is a question
    without an answer (SQuAD v2.0).
    """
    qid = record.get("id", default_id)
    where = f"record {record_name}: " if record_name else f"id {qid!r}: " if "id" in record else ""

    def fail(message: str) -> None:
        raise DataError(where + message, path, line)

    for field in ("question", "context"):
        value = record.get(field)
        if field not in record or value is None:
            fail(f"missing field {field!r} (expected question, context and answers)")
        if not isinstance(value, str) or not value.strip():
            fail(f"field {field!r} must be a non-empty string, got {value!r}")
    context = record["context"]
    ex = {"id": str(qid), "question": record["question"], "context": context, "path": path}
    if record_name:
        ex["record"] = record_name
    if line is not None:
        ex["line"] = line
    if record.get("title"):
        ex["title"] = record["title"]
    if not labelled:
        return ex
    if "answers" not in record:
        fail("missing field 'answers' (a list of {\"text\", \"answer_start\"}; [] for no answer)")
    answers = _answer_list(record["answers"], fail)
    impossible = bool(record.get("is_impossible", False))
    if impossible and answers:
        fail("is_impossible is true but answers are given")
    for k, answer in enumerate(answers):
        text, start = answer["text"], answer["answer_start"]
        if context[start:start + len(text)] != text:
            found = [m.start() for m in re.finditer(re.escape(text), context)][:3]
            hint = f"; the text occurs at offset(s) {found}" if found else "; the text does not occur in the context"
            fail(f"answer {k} ({text!r}) does not match the context at answer_start {start} "
                 f"(the context there reads {context[start:start + len(text)]!r}){hint}")
    ex["answers"] = answers
    ex["impossible"] = not answers
    return ex


def _answer_list(raw: Any, fail) -> list[dict]:
    if isinstance(raw, dict):  # Hugging Face layout: parallel lists
        texts, starts = raw.get("text"), raw.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            fail("answers as a mapping must hold equally long lists 'text' and 'answer_start'")
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(raw, list):
        fail(f"'answers' must be a list of {{\"text\", \"answer_start\"}}, got {raw!r}")
    answers = []
    for k, answer in enumerate(raw):
        if not isinstance(answer, dict) or "text" not in answer or "answer_start" not in answer:
            fail(f"answer {k} must be an object with 'text' and 'answer_start', got {answer!r}")
        text, start = answer["text"], answer["answer_start"]
        if not isinstance(text, str) or not text:
            fail(f"answer {k}: 'text' must be a non-empty string, got {text!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            fail(f"answer {k}: 'answer_start' must be a character offset (an integer >= 0), got {start!r}")
        answers.append({"text": text, "answer_start": start})
    return answers


# ---- the official metric ---------------------------------------------------------------------------
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation, in the official order: lower-case, punctuation, articles, white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str, empty_agrees: bool = True) -> float:
    """Token-overlap F1. ``empty_agrees``: two answers that normalise to nothing score 1 (the v2.0
    rule, where "" is the no-answer answer); v1.1 scores any empty side 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if empty_agrees and (not pred or not ref):
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def question_scores(prediction: str, gold_texts: Sequence[str], v2: bool) -> tuple[float, float]:
    """(exact, F1) of one question, the best over its gold answers.

    v2.0 drops gold answers that normalise to nothing, and a question left without gold answers is a
    no-answer question whose only right answer is "" (evaluate-v2.0.py's ``get_raw_scores``).
    """
    golds = list(gold_texts)
    if v2:
        golds = [g for g in golds if normalize_answer(g)] or [""]
    return (max(exact_match(prediction, g) for g in golds),
            max(f1(prediction, g, empty_agrees=v2) for g in golds))


def squad_scores(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]], v2: bool,
                 null_score_diffs: Sequence[float] | None = None,
                 best_spans: Sequence[str] | None = None) -> dict[str, Any]:
    """EM / F1 in percent over all questions, as evaluate-v1.1.py or evaluate-v2.0.py reports them.

    For v2.0 the HasAns / NoAns splits are added, and, given each question's no-answer score margin
    (``null_score_diffs``: null score minus the best span's score) and the best span's text, the
    threshold on that margin that maximises EM and F1 (the official ``find_best_thresh`` sweep, with the
    margin in place of the no-answer probability). A question is answered "" when margin > threshold.
    """
    total = len(predictions)
    raw = [question_scores(p, g, v2) for p, g in zip(predictions, gold_answers)]
    out: dict[str, Any] = {
        "exact": 100.0 * sum(e for e, _ in raw) / total,
        "f1": 100.0 * sum(s for _, s in raw) / total,
        "total": total,
    }
    if not v2:
        return out
    has_answer = [bool(g) for g in gold_answers]
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        idx = [i for i in range(total) if has_answer[i] == wanted]
        if idx:
            out[f"{prefix}_exact"] = 100.0 * sum(raw[i][0] for i in idx) / len(idx)
            out[f"{prefix}_f1"] = 100.0 * sum(raw[i][1] for i in idx) / len(idx)
            out[f"{prefix}_total"] = len(idx)
    if null_score_diffs is not None and best_spans is not None:
        span_raw = [question_scores(s, g, v2) for s, g in zip(best_spans, gold_answers)]
        for k, name in ((0, "exact"), (1, "f1")):
            score, threshold = best_threshold([r[k] for r in span_raw], has_answer, null_score_diffs, best_spans)
            out[f"best_{name}"], out[f"best_{name}_thresh"] = score, threshold
    return out


def best_threshold(span_scores: Sequence[float], has_answer: Sequence[bool], diffs: Sequence[float],
                   spans: Sequence[str]) -> tuple[float, float]:
    """(best score in percent, threshold): start with every question unanswered, then answer them in
    order of growing no-answer margin, keeping the margin where the running score peaked."""
    current = best = sum(1 for h in has_answer if not h)
    threshold = min(diffs) - 1.0 if diffs else 0.0
    for i in sorted(range(len(diffs)), key=lambda j: diffs[j]):
        if has_answer[i]:
            current += span_scores[i]
        elif spans[i]:
            current -= 1
        if current > best:
            best, threshold = current, diffs[i]
    return 100.0 * best / max(1, len(diffs)), threshold
