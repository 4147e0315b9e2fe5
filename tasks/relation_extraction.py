"""Relation extraction: the relation between two marked entities of a sentence, direction included.

Data: the SemEval-2010 Task 8 release format (``ID<TAB>"sentence with <e1>..</e1> and <e2>..</e2>"``,
the relation, a ``Comment:`` line, a blank line) or JSONL with character spans for head (e1) and
tail (e2). Model: entity markers ``[E1] .. [/E1]`` and ``[E2] .. [/E2]`` are added to the tokenizer and
inserted around the entities; the states of the two start markers, concatenated, go into a
classifier (``nlpkit.sdk.heads.EntityPairHead``). Directional labels stay distinct classes:
``Cause-Effect(e1,e2)`` is not ``Cause-Effect(e2,e1)``.

Score: the official SemEval-2010 Task 8 measure, re-implemented from the task's Perl scorer v1.2 and
checked against the scorer's own example outputs (tests/test_relation_extraction.py).

Option ``mode: generative``: instead of the classifier, the model reads the sentence with SemEval's own
``<e1>..</e1>`` markup and writes the relation's label (``Cause-Effect(e2,e1)``) on any backbone kind a
``TextGenerator`` supports (decoder-only models included); the text is parsed back to a label
(``parse_relation``) and scored by the same official scorer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from nlpkit import DataError, Task, register_task
from nlpkit.sdk.data import pad_encodings, read_jsonl, read_text_lines
from nlpkit.sdk.generation import (Generated, GenerativeModeOptions,
                                   TextGeneration)
from nlpkit.sdk.modeling import Modeling
from nlpkit.sdk.options import require

MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")
INLINE_RE = re.compile(r"</?e[12]>", re.IGNORECASE)
DIRECTED_RE = re.compile(r"^(?P<type>.+)\((?P<first>e[12]),(?P<second>e[12])\)$")
SEMEVAL_SENTENCE_RE = re.compile(r'^(\d+)\t"(.*)"\s*$')
SEMEVAL_LABEL_RE = re.compile(r"^(?:Other|[A-Za-z]+(?:-[A-Za-z]+)*\((?:e1,e2|e2,e1)\))$")
#: the scorer's label set: nine relation types in two directions, plus Other
SEMEVAL_LABELS = frozenset(["Other"] + [
    f"{t}({d})" for t in ("Cause-Effect", "Component-Whole", "Content-Container", "Entity-Destination",
                          "Entity-Origin", "Instrument-Agency", "Member-Collection", "Message-Topic",
                          "Product-Producer") for d in ("e1,e2", "e2,e1")])


@dataclass
class RelationOptions(GenerativeModeOptions):
    max_length: int = 128
    #: "auto": .jsonl/.json is JSONL, anything else the SemEval-2010 Task 8 format
    format: str = "auto"
    #: the label meaning "no relation": left out of the macro and micro averages, as SemEval's Other
    negative_label: str = "Other"
    dropout: float = 0.1
    #: mode=generative: target tokens in training (a label is a few tokens)
    max_target_length: int = 32

    def validate(self, key: str) -> None:
        super().validate(key)
        require(self.format in ("auto", "semeval", "jsonl"), f"{key}.format", "must be auto, semeval or jsonl")
        require(bool(self.negative_label), f"{key}.negative_label", "must not be empty")
        require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")


# ---- the official scorer ---------------------------------------------------------------------------
def relation_type(label: str) -> str:
    """``Cause-Effect(e2,e1)`` -> ``Cause-Effect``; undirected labels are their own type."""
    m = DIRECTED_RE.match(label)
    return m.group("type") if m else label


def official_scores(key: Mapping[Any, str], proposed: Mapping[Any, str], other: str = "Other") -> dict[str, Any]:
    """SemEval-2010 Task 8 scores, "(9+1)-way evaluation with directionality taken into account".

    As the Perl scorer v1.2 computes them: ``key`` and ``proposed`` map an id to a label; ids missing
    from ``proposed`` are skipped examples (they count against recall). Per relation type T (gold
    types only, ``other`` excluded from the averages):
    - correct(T): the predicted label equals the gold label, direction included;
    - P(T) = correct / every prediction of type T, including those with the right type but the wrong
      direction (the scorer's xDIRx column, added back in v1.2);
    - R(T) = correct / gold examples of type T (skipped ones too); F1 from P and R.
    The official score is the mean of F1(T) over the relation types present in the key. Micro scores
    sum over the same types, so a prediction of a type absent from the key counts nowhere (the scorer
    says so: "which is probably not optimal"). Scores in percent.
    """
    unexpected = [i for i in proposed if i not in key]
    if unexpected:
        raise DataError(f"proposed answers for ids missing from the key: {unexpected[:5]}")
    gold_count: dict[str, int] = {}
    for label in key.values():
        gold_count[relation_type(label)] = gold_count.get(relation_type(label), 0) + 1
    proposed_count: dict[str, int] = {}  # predictions per type, wrong directions included
    correct: dict[str, int] = {}
    exact = 0
    for i, label in proposed.items():
        t = relation_type(label)
        proposed_count[t] = proposed_count.get(t, 0) + 1
        if label == key[i]:
            correct[t] = correct.get(t, 0) + 1
            exact += 1
    per_type, sums = {}, {"correct": 0, "proposed": 0, "gold": 0}
    for t in sorted(gold_count):
        c, p, g = correct.get(t, 0), proposed_count.get(t, 0), gold_count[t]
        precision = 100.0 * c / p if p else 0.0
        recall = 100.0 * c / g
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_type[t] = {"precision": precision, "recall": recall, "f1": f1, "support": g}
        if t != other:
            sums["correct"] += c
            sums["proposed"] += p
            sums["gold"] += g
    rel = [v for t, v in per_type.items() if t != other]
    micro_p = 100.0 * sums["correct"] / sums["proposed"] if sums["proposed"] else 0.0
    micro_r = 100.0 * sums["correct"] / sums["gold"] if sums["gold"] else 0.0
    return {
        "macro_f1": sum(v["f1"] for v in rel) / len(rel) if rel else 0.0,
        "macro_precision": sum(v["precision"] for v in rel) / len(rel) if rel else 0.0,
        "macro_recall": sum(v["recall"] for v in rel) / len(rel) if rel else 0.0,
        "micro_f1": 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r else 0.0,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "accuracy": 100.0 * exact / len(key) if key else 0.0,  # all labels, direction included
        "per_type": per_type,
    }


def read_answer_file(path: str, encoding: str = "utf-8") -> dict[str, str]:
    """An answer key or proposed answer file of the scorer: ``ID<TAB>LABEL`` per line, official labels only."""
    answers: dict[str, str] = {}
    for lineno, raw in read_text_lines(path, encoding):
        m = re.match(r"^([0-9]+)\t([^\r\n]+)$", raw)
        if not m or m.group(2) not in SEMEVAL_LABELS:
            raise DataError(f"expected ID<TAB>LABEL with one of the 19 SemEval labels, got {raw.rstrip()[:100]!r}",
                            path, lineno)
        if m.group(1) in answers:
            raise DataError(f"ID {m.group(1)} is already defined", path, lineno)
        answers[m.group(1)] = m.group(2)
    return answers


# ---- reading ---------------------------------------------------------------------------------------
def parse_marked(marked: str, path: str | None = None, line: int | None = None) -> tuple[str, list[int], list[int]]:
    """(plain text, e1 span, e2 span) from inline ``<e1>..</e1>`` and ``<e2>..</e2>`` markers."""
    text, opened, spans, last = [], {}, {}, 0
    length = 0
    for m in INLINE_RE.finditer(marked):
        text.append(marked[last:m.start()])
        length += m.start() - last
        last = m.end()
        tag = m.group().lower()
        name = tag.strip("</>")
        if tag.startswith("</"):
            if name not in opened:
                raise DataError(f"{tag} without an opening <{name}>: entity markers are unbalanced", path, line)
            spans[name] = [opened.pop(name), length]
        else:
            if name in opened or name in spans:
                raise DataError(f"<{name}> occurs twice: entity markers are unbalanced", path, line)
            opened[name] = length
    text.append(marked[last:])
    for name in opened:
        raise DataError(f"<{name}> is never closed by </{name}>: entity markers are unbalanced", path, line)
    for name in ("e1", "e2"):
        if name not in spans:
            raise DataError(f"entity marker <{name}>...</{name}> missing (mark both entities, e.g. "
                            "'The <e1>company</e1> fabricates <e2>chairs</e2> .')", path, line)
    plain = "".join(text)
    check_spans(plain, spans["e1"], spans["e2"], path, line)
    return plain, spans["e1"], spans["e2"]


def check_spans(text: str, head: list[int], tail: list[int], path: str | None, line: int | None) -> None:
    if not text.strip():
        raise DataError("empty text", path, line)
    for name, (start, end) in (("head (e1)", head), ("tail (e2)", tail)):
        if not 0 <= start < end <= len(text) or not text[start:end].strip():
            raise DataError(f"{name} span [{start}, {end}] is empty or outside the text of {len(text)} characters",
                            path, line)
    if head[0] < tail[1] and tail[0] < head[1]:
        raise DataError(f"head {head} and tail {tail} overlap", path, line)


def read_semeval(path: str, encoding: str = "utf-8") -> list[dict]:
    """The SemEval-2010 Task 8 release format; the Comment line is optional."""
    numbered = list(read_text_lines(path, encoding))  # (line number, text): BOM-only lines are left out
    lines = [text for _, text in numbered]
    examples, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        lineno = numbered[i][0]
        m = SEMEVAL_SENTENCE_RE.match(lines[i])
        if not m:
            raise DataError(f'expected a sentence line ID<TAB>"... <e1>..</e1> ... <e2>..</e2> ...", got '
                            f"{lines[i][:80]!r}", path, lineno)
        text, head, tail = parse_marked(m.group(2), path, lineno)
        label = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if not SEMEVAL_LABEL_RE.match(label):
            raise DataError(f"expected the relation (Other or Type(e1,e2) / Type(e2,e1)) after the sentence, "
                            f"got {label[:80]!r}", path, numbered[i + 1][0] if i + 1 < len(lines) else lineno + 1)
        examples.append({"id": m.group(1), "text": text, "head": head, "tail": tail, "label": label, "line": lineno})
        i += 3 if i + 2 < len(lines) and lines[i + 2].startswith("Comment") else 2
    return examples


def span_of(value: Any, name: str, text: str, path: str, line: int) -> list[int]:
    if isinstance(value, dict) and "start" in value and "end" in value:
        span = [value["start"], value["end"]]
        if "text" in value and isinstance(span[0], int) and isinstance(span[1], int) \
                and text[span[0]:span[1]] != value["text"]:
            raise DataError(f"{name} span [{span[0]}, {span[1]}] covers {text[span[0]:span[1]]!r}, "
                            f"not its text {value['text']!r}", path, line)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        span = list(value)
    else:
        raise DataError(f"{name} must be [start, end] or {{\"start\": .., \"end\": ..}} character offsets, "
                        f"got {value!r}", path, line)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in span):
        raise DataError(f"{name} offsets must be integers, got {value!r}", path, line)
    return span


def parse_record(record: dict, path: str | None, line: int | None, labelled: bool) -> dict:
    """A JSON record: text with head/tail character spans, or text with inline markers."""
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError("empty or missing \"text\"", path, line)
    if "head" in record or "tail" in record:
        if "head" not in record or "tail" not in record:
            raise DataError("give both \"head\" and \"tail\" spans", path, line)
        head = span_of(record["head"], "head", text, path, line)
        tail = span_of(record["tail"], "tail", text, path, line)
        check_spans(text, head, tail, path, line)
    elif INLINE_RE.search(text):
        text, head, tail = parse_marked(text, path, line)
    else:
        raise DataError("expected \"head\" and \"tail\" character spans, or <e1>..</e1> and <e2>..</e2> "
                        "markers in the text", path, line)
    example = {"text": text, "head": head, "tail": tail, "line": line}
    label = record.get("label", record.get("relation"))
    if labelled:
        if label is not None and not isinstance(label, str):
            what = {dict: "a JSON object", list: "a list"}.get(type(label), type(label).__name__)
            raise DataError(f"field \"label\" must be the relation's name (a string), got {what} {str(label)[:80]}",
                            path, line)
        if not isinstance(label, str) or not label.strip():
            raise DataError("missing or empty \"label\"", path, line)
        example["label"] = label.strip()
    if "id" in record:
        example["id"] = str(record["id"])
    return example


def marked_text(ex: dict) -> str:
    """The text with marker tokens around the entities: ``The[E1] company[/E1] fabricates``.

    An opening marker goes before the white space that precedes its entity and a closing marker right
    after the entity, so a byte-level tokenizer makes no lone-space tokens around them (WordPiece splits
    the markers off either way). At a shared offset a closing marker comes first.
    """
    (h0, h1), (t0, t1) = ex["head"], ex["tail"]
    text = ex["text"]

    def before_space(pos: int) -> int:
        floor = max([p for p in (h0, h1, t0, t1) if p < pos], default=0)
        while pos > floor and text[pos - 1].isspace():
            pos -= 1
        return pos

    inserts = sorted([(before_space(h0), 1, "[E1]"), (h1, 0, "[/E1]"), (before_space(t0), 1, "[E2]"), (t1, 0, "[/E2]")])
    out, last = [], 0
    for pos, _, marker in inserts:
        out.append(text[last:pos])
        out.append(marker)
        last = pos
    out.append(text[last:])
    return "".join(out)


# ---- generative mode: the relation written as its label -------------------------------------------
def inline_marked_text(ex: dict) -> str:
    """The text with the entities in SemEval's own markup, ``The <e1>company</e1> fabricates ..``: plain
    text a pretrained language model has read before, so generation needs no new embedding rows (the
    head mode's ``[E1]`` marker tokens are new tokens)."""
    text = ex["text"]
    inserts = sorted([(ex["head"][0], 1, "<e1>"), (ex["head"][1], 0, "</e1>"),
                      (ex["tail"][0], 1, "<e2>"), (ex["tail"][1], 0, "</e2>")])
    out, last = [], 0
    for pos, _, tag in inserts:
        out += [text[last:pos], tag]
        last = pos
    return "".join(out + [text[last:]])


def relation_instruction(labels: Sequence[str]) -> str:
    """What a decoder-only model is asked in generative mode: the relation types, each with two directions."""
    directed = sorted({m.group("type") for m in map(DIRECTED_RE.match, labels) if m})
    plain = [lab for lab in labels if not DIRECTED_RE.match(lab)]
    return f"The relation of <e1> to <e2>: {', '.join(directed + plain)}; directed as Type(e1,e2) or Type(e2,e1)."


def _label_key(text: str) -> str:
    """A label as compared after the exact match failed: no case, spaces, quotes, underscores or final dots."""
    return re.sub(r"[\s_\"'`]+", "", text).casefold().rstrip(".")


def parse_relation(text: str, labels: Sequence[str], fallback: str) -> tuple[str, bool]:
    """(label, parsed) for a generated text: the exact label, else the one label it equals once case,
    spaces and quotes are left out (also of its first line alone), else ``fallback`` (the task's
    "no relation" label) with parsed False, so an unreadable answer counts as no relation."""
    text = text.strip()
    if text in labels:
        return text, True
    keys: dict[str, list[str]] = {}
    for label in labels:
        keys.setdefault(_label_key(label), []).append(label)
    for candidate in (text, text.split("\n", 1)[0]):
        found = keys.get(_label_key(candidate), [])
        if len(found) == 1:  # two labels that differ only in case are never guessed between
            return found[0], True
    return fallback, False


# ---- the plugin ------------------------------------------------------------------------------------
@register_task("relation-extraction")
class RelationExtractionTask(Task):
    sample_inputs = ["The <e1>company</e1> fabricates plastic <e2>chairs</e2> .",
                     "The <e1>burst</e1> was caused by water hammer <e2>pressure</e2> ."]
    description = "relation extraction between two marked entities (SemEval-2010 Task 8 format, JSONL spans)"
    Options = RelationOptions
    main_score = "macro_f1"
    #: on a decoder the pair is read from the last real token, which saw both marked entities
    backbone_kinds = ("encoder", "encoder-decoder", "decoder")
    input_fields = ("text", "head", "tail", "id")  # or one text with <e1>..</e1> <e2>..</e2> markers

    def __init__(self, name=None, options=None):
        super().__init__(name, options)
        self.labels: list[str] = []

    def read(self, path: str) -> list[dict]:
        fmt = self.options.format
        if fmt == "auto":
            fmt = "jsonl" if re.search(r"\.(jsonl|json|ndjson)(\.gz)?$", str(path).lower()) else "semeval"
        if fmt == "semeval":
            return read_semeval(path, self.options.encoding)
        return [parse_record(rec, path, lineno, labelled=True) for lineno, rec in read_jsonl(path, self.options.encoding)]

    def read_hub(self, rows: Any, spec: str) -> list[dict]:
        """Rows with a marked ``sentence`` (or ``text``) and a ``relation`` ClassLabel, as the hub's sem_eval_2010_task_8."""
        feature = (getattr(rows, "features", None) or {}).get("relation")
        examples = []
        for i, row in enumerate(rows):
            record = dict(row)
            record.setdefault("text", record.get("sentence"))
            if feature is not None and hasattr(feature, "int2str") and isinstance(record.get("relation"), int):
                record["relation"] = feature.int2str(record["relation"])
            examples.append(parse_record(record, spec, i + 1, labelled=True))
        return examples

    def fit(self, train_examples: Sequence[dict]) -> None:
        found = {ex["label"] for ex in train_examples}
        for label in list(found):  # both directions of a directed type, even if one is rare or absent
            m = DIRECTED_RE.match(label)
            if m and {m.group("first"), m.group("second")} == {"e1", "e2"}:
                found.add(f"{m.group('type')}({m.group('second')},{m.group('first')})")
        self.labels = sorted(found)
        if len(self.labels) < 2:
            raise DataError(f"the training data has a single relation ({self.labels[0]!r}); a classifier needs two")

    def check(self, examples: Sequence[dict], path: str) -> None:
        self.check_labels(examples, self.labels, "label", path, what="relation")

    def texts(self, examples: Sequence[dict]) -> Iterator[str]:
        if self.options.mode == "generative":  # a from-scratch tokenizer also learns the prompt, markup and labels
            return self._generative_texts(examples)
        return (ex["text"] for ex in examples)

    def _generative_texts(self, examples: Sequence[dict]) -> Iterator[str]:
        instruction = relation_instruction(sorted({ex["label"] for ex in examples if "label" in ex}))
        for ex in examples:  # the instruction as often as the model reads it: once per prompt
            yield instruction
            yield inline_marked_text(ex)
            if "label" in ex:
                yield ex["label"]

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])

    # ---- the model: a classifier over the two marked entities, or the label written as text -------------
    def special_tokens(self) -> list[str]:
        return [] if self.options.mode == "generative" else list(MARKERS)  # the prompt marks entities in plain text

    def instruction(self) -> str:
        return relation_instruction(self.labels)

    def modeling(self) -> Modeling:
        o = self.options
        if o.mode == "generative":
            return TextGeneration(self.name, o.generation_options(), instruction=self.instruction(),
                                  response_cue="Relation:", render=render_relation, parse=self.parse_output,
                                  not_standard="generative relation extraction writes a label as text, which nlpkit "
                                               "parses back; no standard transformers class does that")
        return EntityPairClassifier(self.labels, max_length=o.max_length, dropout=o.dropout)

    def parse_output(self, example: dict, out: Generated) -> dict:
        """Generative mode: the generated text parsed to a label (the negative label when it names none), then
        the head mode's prediction without a probability (a generated label has none of the classifier's)."""
        label, parsed = parse_relation(out.text, self.labels, self.options.negative_label)
        pred = relation_prediction(example, label, None)
        pred.update(output=out.text, parsed=parsed, at_limit=out.at_limit)
        return pred

    # ---- scoring -------------------------------------------------------------------------------------
    def score(self, predictions, examples) -> dict[str, Any]:
        key = {i: ex["label"] for i, ex in enumerate(examples)}
        proposed = {i: p["relation"] for i, p in enumerate(predictions)}
        scores = official_scores(key, proposed, other=self.options.negative_label)
        scores["metric"] = "SemEval-2010 Task 8 official: macro-F1 over relation types, directionality required, " \
                           f"{self.options.negative_label!r} excluded"
        if predictions and "parsed" in predictions[0]:  # generative mode: answers that named no label
            scores["unparsed_outputs"] = sum(not p["parsed"] for p in predictions)
            scores["outputs_at_limit"] = sum(p["at_limit"] for p in predictions)
        return scores

    # ---- raw input -----------------------------------------------------------------------------------
    def parse_input(self, item) -> dict:
        if isinstance(item, dict):
            return parse_record(item, None, None, labelled=False)
        if not isinstance(item, str) or not item.strip():
            raise DataError("empty input text")
        text, head, tail = parse_marked(item)
        return {"text": text, "head": head, "tail": tail}

    def format_prediction(self, prediction: dict) -> str:
        rel, e1, e2, prob = prediction["relation"], prediction["e1"], prediction["e2"], prediction["probability"]
        shown = f"  ({prob:.2f})" if prob is not None else ""  # generative mode: no probability
        if rel == self.options.negative_label:
            return f'{rel}: no directed relation between e1 "{e1}" and e2 "{e2}"{shown}'
        m = DIRECTED_RE.match(rel)
        if not m:
            return f'{rel}: "{e1}" -> "{e2}"{shown}'
        first, second = m.group("first"), m.group("second")
        roles = m.group("type").split("-")
        role1, role2 = (roles[0], roles[1]) if len(roles) == 2 else ("", "")
        words = {"e1": e1, "e2": e2}
        return (f'{rel}: {role1 or "first"} = "{words[first]}" ({first}) -> {role2 or "second"} = '
                f'"{words[second]}" ({second}){shown}')


class EntityPairClassifier(Modeling):
    """The head mode: the sentence with its entities marked by <e1> </e1> <e2> </e2> tokens, a classifier over the
    states at the two start markers (over the last real token on a decoder, the one that saw both)."""

    def __init__(self, labels: Sequence[str], max_length: int, dropout: float):
        self.labels, self.max_length, self.dropout = list(labels), max_length, dropout

    def setup(self, backbone) -> None:
        super().setup(backbone)
        self.marker_ids = self.tokenizer.convert_tokens_to_ids(list(MARKERS))

    def encode(self, examples: Sequence[dict]) -> list[dict]:
        enc = self.tokenizer([marked_text(ex) for ex in examples])
        label_id = {lab: i for i, lab in enumerate(self.labels)}
        e1, e2 = self.marker_ids[0], self.marker_ids[2]
        features = []
        for i, ex in enumerate(examples):
            ids = enc["input_ids"][i]
            ids = self.fit_length(ids, (ids_index(ids, e1), ids_index(ids, e2)))
            feature = {"example_index": i, "input_ids": ids, "entity_positions": [ids.index(e1), ids.index(e2)]}
            if "label" in ex:
                feature["labels"] = label_id[ex["label"]]
            features.append(feature)
        return features

    def fit_length(self, ids: list[int], starts: tuple[int, int]) -> list[int]:
        """Cut a long sequence to ``max_length`` around the two start markers, keeping both, and keep
        the tokenizer's special tokens at both ends."""
        limit = self.max_length
        if len(ids) <= limit:
            return ids
        special = set(self.tokenizer.all_special_ids) - set(self.marker_ids)
        lead = 1 if ids[0] in special else 0
        trail = 1 if ids[-1] in special else 0
        body = ids[lead:len(ids) - trail]
        a, b = sorted(s - lead for s in starts)
        budget = limit - lead - trail
        if b - a < budget:  # one window holding both markers, centred on them
            start = max(0, min(a - (budget - (b - a)) // 2, len(body) - budget))
            window = body[start:start + budget]
        else:  # entities too far apart: a window from each marker (the second one ends the text at most)
            half = budget // 2
            second = min(b, len(body) - (budget - half))
            window = body[a:a + half] + body[second:second + budget - half]
        return ids[:lead] + window + (ids[-trail:] if trail else [])

    def collate(self, features: Sequence[dict]) -> dict:
        import torch

        batch = pad_encodings(features, self.tokenizer.pad_token_id)
        batch["entity_positions"] = torch.tensor([f["entity_positions"] for f in features], dtype=torch.long)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    def build_head(self, backbone):
        from nlpkit.sdk.heads import EntityPairHead

        representation = "last" if backbone.kind == "decoder" else "entity-start"
        return EntityPairHead(backbone.hidden_size, len(self.labels), num_entities=2, dropout=self.dropout,
                              representation=representation)

    def predict_batch(self, head, backbone, batch) -> list[tuple[int, float]]:
        probs, ids = head(backbone, batch)["logits"].float().softmax(-1).max(-1)
        return list(zip(ids.cpu().tolist(), probs.cpu().tolist()))

    def decode(self, examples, features, outputs) -> list[dict]:
        return [relation_prediction(ex, self.labels[label_index], round(prob, 4))
                for ex, (label_index, prob) in zip(examples, outputs)]


def render_relation(example: dict) -> tuple[str, str | None]:
    """Generative mode's (source, target): the sentence with its entities marked in plain text, and the label."""
    return inline_marked_text(example), example.get("label")


def relation_prediction(ex: dict, label: str, probability: float | None) -> dict:
    """The prediction for one example: the relation, its type, direction and the two entities' text."""
    (h0, h1), (t0, t1) = ex["head"], ex["tail"]
    pred = {"relation": label, "type": relation_type(label), "probability": probability,
            "e1": ex["text"][h0:h1], "e2": ex["text"][t0:t1]}
    m = DIRECTED_RE.match(label)
    if m:
        pred["direction"] = f"{m.group('first')}->{m.group('second')}"
    return pred


def ids_index(ids: list[int], token: int) -> int:
    """Position of a marker token; a tokenizer that splits markers would break the model silently."""
    try:
        return ids.index(token)
    except ValueError:
        raise DataError("an entity marker token is missing after tokenization (the tokenizer does not know "
                        "the markers; was the task's special_tokens() added?)") from None
