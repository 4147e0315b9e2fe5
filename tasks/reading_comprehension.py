"""Multiple-choice reading comprehension (RACE / CosmosQA / SWAG style): pick the right option.

Each option is encoded together with the passage as (passage, question + option); the head scores every
encoding and a softmax over the options of one question gives their probabilities. Questions may have
any number (>= 2) of options, also within one batch. RACE's cloze questions ("... _ .") get the option
in place of the blank; other questions are followed by the option.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from nlpkit import DataError, Task, TaskOptions, register_task
from nlpkit.sdk.data import (load_json, open_text, pad, pad_encodings,
                             read_jsonl)
from nlpkit.sdk.modeling import Modeling

from . import DATA_DIR

LETTERS = string.ascii_uppercase
CONTEXT_FIELDS = ("article", "context", "passage")


@dataclass
class ReadingComprehensionOptions(TaskOptions):
    #: tokens per (passage, question + option) encoding; the passage is cut first
    max_length: int = 256
    #: how an encoding becomes one vector: the mean over the question + option tokens (where the options
    #: differ; learns fastest from scratch), the mean over all tokens, the [CLS] state, or the last real token.
    #: auto: option on an encoder, last on a decoder (the only token that saw passage, question and option)
    pooling: Literal["auto", "option", "mean", "cls", "last"] = "auto"
    dropout: float = 0.1


# ---- reading ---------------------------------------------------------------------------------------
def read_rc(path: str, encoding: str = "utf-8") -> list[dict]:
    """JSONL (one question per line) or the RACE release: one JSON article per file, or a folder of them."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError("folder holds no files (expected RACE article files)", path)
        return [ex for f in files for ex in _read_race_file(str(f), encoding)]
    with open_text(path, encoding) as f:
        text = f.read()
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        document = None  # JSONL: several objects, one per line
    if isinstance(document, dict) and "questions" in document:
        return _race_article(document, path)
    return [make_example(record, path, line, None, f"{Path(path).stem}-{i}")
            for i, (line, record) in enumerate(read_jsonl(path, encoding))]


def _read_race_file(path: str, encoding: str = "utf-8") -> list[dict]:
    with open_text(path, encoding) as f:
        document = load_json(f, path)
    if not isinstance(document, dict) or "questions" not in document:
        raise DataError("expected a RACE article: {\"article\", \"questions\": [...], \"options\": [[...]], "
                        "\"answers\": [...]}", path)
    return _race_article(document, path)


def _race_article(doc: dict, path: str) -> list[dict]:
    """A RACE article holds parallel lists: questions[i], options[i] (a list) and answers[i] (a letter)."""
    for field in ("article", "questions", "options", "answers"):
        if field not in doc:
            raise DataError(f"RACE article: missing field {field!r} (expected article, questions, options, answers)",
                            path)
    lists = [doc["questions"], doc["options"], doc["answers"]]
    if not all(isinstance(x, list) for x in lists) or len({len(x) for x in lists}) != 1:
        raise DataError("RACE article: questions, options and answers must be lists of the same length "
                        f"(got {', '.join(str(len(x)) if isinstance(x, list) else type(x).__name__ for x in lists)})",
                        path)
    base = doc.get("id") or Path(path).name
    return [make_example({"article": doc["article"], "question": q, "options": o, "answer": a}, path, None,
                         f"questions[{i}]", f"{base}-{i}") for i, (q, o, a) in enumerate(zip(*lists))]


def make_example(record: dict, path: str, line: int | None, record_name: str | None, default_id: str,
                 labelled: bool = True) -> dict:
    """Check one question record: a passage (article/context/passage), a question, a list of options and
    the answer as a letter (A, B, ...) or a 0-based index."""
    qid = str(record.get("id", default_id))
    where = f"record {record_name}: " if record_name else ""

    def fail(message: str) -> None:
        raise DataError(where + message, path, line)

    context_field = next((f for f in CONTEXT_FIELDS if f in record), None)
    if context_field is None:
        fail("missing field 'article' (or 'context'/'passage'); expected article, question, options, answer")
    context = record[context_field]
    if not isinstance(context, str) or not context.strip():
        fail(f"field {context_field!r} must be a non-empty string, got {context!r}")
    if "question" not in record:
        fail("missing field 'question'")
    question = record["question"]
    if not isinstance(question, str):
        fail(f"field 'question' must be a string, got {question!r}")
    options = record.get("options")
    if isinstance(options, str):  # from the command line: a JSON list or options separated by |
        try:
            options = json.loads(options) if options.lstrip().startswith("[") else [o.strip() for o in options.split("|")]
        except json.JSONDecodeError as exc:
            fail(f"'options' is not a valid JSON list ({exc.msg}); or separate the options with |")
    if not isinstance(options, list) or len(options) < 2 or len(options) > len(LETTERS):
        fail(f"field 'options' must be a list of 2 to {len(LETTERS)} options, got {options!r}")
    for k, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            fail(f"option {k} must be a non-empty string, got {option!r}")
    ex = {"id": qid, "context": context, "question": question, "options": list(options), "path": path}
    if line is not None:
        ex["line"] = line
    if record_name:
        ex["record"] = record_name
    if not labelled:
        return ex
    answer = record.get("answer", record.get("label"))
    if answer is None:
        fail("missing field 'answer' (a letter A, B, ... or a 0-based option index)")
    ex["label"] = _answer_index(answer, len(options), fail)
    return ex


def _answer_index(answer: Any, n: int, fail) -> int:
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer)
    if isinstance(answer, str):
        letter = answer.strip().upper()
        if len(letter) != 1 or letter not in LETTERS:
            fail(f"answer {answer!r} is neither a letter (A, B, ...) nor an option index")
        index = LETTERS.index(letter)
    elif isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    else:
        fail(f"answer {answer!r} is neither a letter (A, B, ...) nor an option index")
    if not 0 <= index < n:
        fail(f"answer {answer!r} is out of range for {n} options (A-{LETTERS[n - 1]}, or 0-{n - 1})")
    return index


def pair_text(question: str, option: str) -> str:
    """The second segment of one encoding: the option fills RACE's blank, or follows the question."""
    if "_" in question:
        return question.replace("_", option, 1)
    return f"{question} {option}".strip()


# ---- the plugin ------------------------------------------------------------------------------------
@register_task("reading-comprehension")
class ReadingComprehensionTask(Task):
    sample_inputs = [
        {"article": "Tom went to the market to buy apples. He came home with a bag of red apples.",
         "question": "What did Tom buy?", "options": ["apples", "bread", "fish", "milk"]},
        {"article": "The museum opens at nine and closes at five every day except Monday.",
         "question": "When is the museum closed?", "options": ["Sunday", "Monday", "Friday"]}]
    description = "multiple-choice reading comprehension (JSONL or RACE files; accuracy)"
    Options = ReadingComprehensionOptions
    main_score = "accuracy"
    input_fields = (*CONTEXT_FIELDS, "question", "options", "id")  # predict --context C --question Q --options 'a|b'
    needs_pretrained = True  # from scratch on the bundled data: chance-level accuracy
    #: on a decoder the pooled vector is the last real token's, which saw passage, question and option
    backbone_kinds = ("encoder", "encoder-decoder", "decoder")

    def default_data(self) -> dict[str, str]:
        folder = DATA_DIR / "reading-comprehension"
        return {"train": str(folder / "train.jsonl"), "dev": str(folder / "dev.jsonl")}

    def read(self, path: str) -> list[dict]:
        return read_rc(path, self.options.encoding)

    def read_hub(self, rows, spec: str) -> list[dict]:
        """Rows with article/context, question, options and answer (as the ``ehovy/race`` dataset)."""
        return [make_example(dict(row), spec, None, f"row {i}", str(i)) for i, row in enumerate(rows)]

    def texts(self, examples: Sequence[dict]):
        seen: set[str] = set()
        for ex in examples:
            if ex["context"] not in seen:  # RACE repeats the article for each of its questions
                seen.add(ex["context"])
                yield ex["context"]
            yield ex["question"]
            yield " ".join(ex["options"])

    # ---- the model: one score per option ------------------------------------------------------------
    def modeling(self) -> Modeling:
        return ChoiceScorer(self.options)

    # ---- scoring -------------------------------------------------------------------------------------
    def score(self, predictions, examples) -> dict[str, Any]:
        right = sum(p["answer"] == ex["label"] for p, ex in zip(predictions, examples))
        return {"accuracy": 100.0 * right / len(examples), "total": len(examples)}

    # ---- raw input -----------------------------------------------------------------------------------
    def parse_input(self, item) -> dict:
        if not isinstance(item, dict):
            raise DataError("reading-comprehension needs a passage, a question and options: nlpkit predict DIR "
                            "--context '...' --question '...' --options 'first|second|third', or JSON lines "
                            "{\"article\", \"question\", \"options\": [...]} on stdin")
        return make_example(item, "<input>", None, None, str(item.get("id", "0")), labelled=False)

    def format_prediction(self, prediction: dict) -> str:
        probs = "  ".join(f"{LETTERS[k]} {p:.2f}" for k, p in enumerate(prediction["probabilities"]))
        return f"{prediction['letter']}) {prediction['option']}    [{probs}]"


class ChoiceScorer(Modeling):
    """Each (passage, question + option) pair scored from one pooled vector; a softmax over a question's options."""

    def __init__(self, options: ReadingComprehensionOptions):
        self.options = options

    def encode(self, examples: Sequence[dict]) -> list[dict]:
        firsts = [ex["context"] for ex in examples for _ in ex["options"]]
        seconds = [pair_text(ex["question"], o) for ex in examples for o in ex["options"]]
        # longest_first cuts the passage (by far the longest part) and never fails on a long option
        enc = self.tokenizer(firsts, seconds, truncation="longest_first", max_length=self.options.max_length)
        features, row = [], 0
        for i, ex in enumerate(examples):
            n = len(ex["options"])
            feature = {"example_index": i, "input_ids": enc["input_ids"][row:row + n]}
            if self.pooling == "option":  # 1 on the question + option segment
                feature["pool_mask"] = [[int(s == 1) for s in enc.sequence_ids(r)] for r in range(row, row + n)]
            if "token_type_ids" in enc:
                feature["token_type_ids"] = enc["token_type_ids"][row:row + n]
            if "label" in ex:
                feature["label"] = ex["label"]
            features.append(feature)
            row += n
        return features

    def feature_length(self, feature: dict) -> int:
        return max(len(ids) for ids in feature["input_ids"]) * len(feature["input_ids"])

    def collate(self, features: Sequence[dict]) -> dict:
        rows = [{key: f[key][k] for key in ("input_ids", "token_type_ids", "pool_mask") if key in f}
                for f in features for k in range(len(f["input_ids"]))]
        batch = pad_encodings(rows, self.tokenizer.pad_token_id, keys=("input_ids", "token_type_ids"))
        if "pool_mask" in rows[0]:
            batch["pool_mask"] = pad([r["pool_mask"] for r in rows], 0)
        most = max(len(f["input_ids"]) for f in features)
        batch["choice_mask"] = torch.tensor([[k < len(f["input_ids"]) for k in range(most)] for f in features])
        if "label" in features[0]:
            batch["labels"] = torch.tensor([f["label"] for f in features])
        return batch

    def build_head(self, backbone):
        from nlpkit.sdk.heads import MultipleChoiceHead

        pooling = "mean" if self.pooling == "option" else self.pooling  # over pool_mask
        return MultipleChoiceHead(backbone.hidden_size, self.options.dropout, pooling)

    @property
    def pooling(self) -> str:
        from nlpkit.sdk.heads.classification import resolve_pooling

        return resolve_pooling(self.options.pooling, self.backbone_kind, encoder_default="option")

    def predict_batch(self, head, backbone, batch) -> list:
        probs = head(backbone, {k: v for k, v in batch.items() if k != "labels"})["logits"].softmax(-1)
        counts = batch["choice_mask"].sum(1).tolist()
        return [row[:n] for row, n in zip(probs.cpu().tolist(), counts)]

    def decode(self, examples, features, outputs) -> list[dict]:
        preds = []
        for ex, probs in zip(examples, outputs):
            best = max(range(len(probs)), key=probs.__getitem__)
            preds.append({"id": ex.get("id"), "answer": best, "letter": LETTERS[best], "option": ex["options"][best],
                          "probabilities": [round(p, 6) for p in probs]})
        return preds
