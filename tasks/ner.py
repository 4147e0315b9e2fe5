"""Named-entity recognition: CoNLL files in, entity spans with character offsets out.

Scores are computed on words (first sub-token of each word), never on sub-tokens, with seqeval's
default conlleval-compatible mode (``strict: true`` switches to seqeval's strict IOB2 mode).

Two modes (option ``mode``). ``head``: a tag per word from a classifier on the backbone's states.
``generative``: the model writes the sentence with its entities bracketed inline
(``[ John Smith | PER ] lives in [ Paris | LOC ] .``), on any backbone kind text generation supports
(causal-LM fine-tuning on a decoder, a seq2seq head on an encoder or encoder-decoder); the text is
parsed back to one tag per source word and goes through the same decoding and scoring as the head's
tags, so both modes are compared on the same data.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Iterable, Iterator, Literal, Sequence

from nlpkit import DataError, Task, register_task
from nlpkit.sdk.data import input_text, read_text_blocks
from nlpkit.sdk.generation import (Generated, GenerativeModeOptions,
                                   TextGeneration)
from nlpkit.sdk.modeling import Modeling, WordTagger

from . import DATA_DIR

TAG_RE = re.compile(r"^(?:O|[BIESLU]-.+)$")
log = logging.getLogger("nlpkit.tasks.ner")
WORD_RE = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")


@dataclass
class NerOptions(GenerativeModeOptions):
    #: tagging scheme of the input files; "auto" detects IOB1 / IOB2 / BIOES (BILOU) per file
    scheme: Literal["auto", "iob1", "iob2", "bioes"] = "auto"
    #: seqeval strict IOB2 mode instead of the conlleval-compatible default
    strict: bool = False
    dropout: float = 0.1
    #: mode=generative: target tokens in training (the whole sentence is rewritten, so about 1.5x its tokens)
    max_target_length: int = 256


# ---- reading ---------------------------------------------------------------------------------------
def read_conll(path: str, encoding: str = "utf-8") -> list[dict]:
    """Sentences of a CoNLL file: any number of columns, the word first and the tag last."""
    return list(iter_conll(path, encoding))


def iter_conll(path: str, encoding: str = "utf-8") -> Iterator[dict]:
    """read_conll one sentence at a time, so a large file never sits in memory.

    The file is read in blocks of lines; a run of lines between two blank lines is split in C (a sentence's lines
    at once) when every line has two or more columns, no -DOCSTART- and known tags; any other run goes line by
    line, which gives the same sentences and the errors with their line numbers."""
    reader = _ConllReader(path)
    for first, text in read_text_blocks(path, encoding):
        yield from reader.feed(first, text)
    yield from reader.sentence()


class _ConllReader:
    """The sentence being read, across blocks; ``feed`` yields the sentences a block completes."""

    def __init__(self, path: str):
        self.path, self.tokens, self.tags, self.start = path, [], [], None
        self.valid: set[str] = set()  # tags already checked: a file has a few dozen, repeated millions of times

    def feed(self, line: int, text: str) -> Iterator[dict]:
        runs = text.split("\n\n")  # runs of lines, each but the last followed by one blank line
        last = len(runs) - 1
        for i, run in enumerate(runs):
            lines = run.split("\n")
            if i == last and text.endswith("\n"):
                lines.pop()  # the empty string after the block's last line end
            if lines:
                yield from self._add(line, lines)
                line += len(lines)
            if i < last:
                yield from self.sentence()
                line += 1

    def _add(self, line: int, lines: list[str]) -> Iterable[dict]:
        """Sentences that lines inside the run complete (a line of spaces, a -DOCSTART-): mostly none."""
        rows = list(map(str.split, lines))
        if min(map(len, rows)) >= 2:
            tokens, tags = list(map(itemgetter(0), rows)), list(map(itemgetter(-1), rows))
            if "-DOCSTART-" not in tokens and self.valid.issuperset(tags):
                self.start = line if self.start is None else self.start
                self.tokens += tokens
                self.tags += tags
                return ()
        done = []
        for lineno, (text, cols) in enumerate(zip(lines, rows), line):
            done += self._add_line(lineno, text, cols)
        return done

    def _add_line(self, lineno: int, line: str, cols: list[str]) -> Iterable[dict]:
        if not cols or cols[0] == "-DOCSTART-":
            return self.sentence()
        if len(cols) < 2:
            raise DataError(f"expected at least 2 columns (WORD ... TAG), got {line[:200]!r}", self.path, lineno)
        tag = cols[-1]
        if tag not in self.valid:
            if not TAG_RE.match(tag):
                raise DataError(f"expected a tag like O, B-PER or I-LOC in the last column, got {tag[:100]!r}",
                                self.path, lineno)
            self.valid.add(tag)
        self.start = lineno if self.start is None else self.start
        self.tokens.append(cols[0])
        self.tags.append(tag)
        return ()

    def sentence(self) -> list[dict]:
        """The sentence read so far, if any, which a blank line (or the end of the file) completes."""
        done = [{"tokens": self.tokens, "tags": self.tags, "line": self.start}] if self.tokens else []
        self.tokens, self.tags, self.start = [], [], None
        return done


def detect_scheme(sentences: Iterable[dict]) -> str:
    """bioes if any tag has an E/S/L/U prefix; else iob1 if an entity starts with I-; else iob2. One pass, so
    it can read a stream."""
    bioes = iob1 = False
    for s in sentences:
        found = _scheme_evidence(s["tags"])
        bioes, iob1 = bioes or found == "bioes", iob1 or found == "iob1"
    return "bioes" if bioes else "iob1" if iob1 else "iob2"


_EVIDENCE_AT = re.compile(r"^[ESLUI]", re.M)  # tags, one per line, that may say something of the scheme
_BIOES_AT = re.compile(r"^[ESLU]", re.M)
_INSIDE = re.compile(r"^I-", re.M)
_CONTINUED = re.compile(r"^[BI]-(.+)\n(?=I-\1$)", re.M)  # a tag that the next one continues (B-X I-X, I-X I-X)


def _scheme_evidence(tags: Sequence[str]) -> str | None:
    """What one sentence's tags say of the scheme: "bioes" (an E/S/L/U prefix), "iob1" (an entity that starts
    with I-), or None (nothing: its tags read the same under every scheme, so to_iob2 leaves them as they are).

    Read over the tags joined one per line, by regular expressions (a million sentences take a second, not
    four); a tag holding a line break takes the plain loop."""
    joined = "\n".join(tags)
    if not _EVIDENCE_AT.search(joined):
        return None
    if joined.count("\n") != len(tags) - 1:
        return _scheme_evidence_loop(tags)
    if _BIOES_AT.search(joined):
        return "bioes"
    return "iob1" if len(_INSIDE.findall(joined)) > len(_CONTINUED.findall(joined)) else None


def _scheme_evidence_loop(tags: Sequence[str]) -> str | None:
    found, prev = None, "O"
    for tag in tags:
        if tag[0] in "ESLU":
            return "bioes"
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            found = "iob1"
        prev = tag
    return found


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    out, prev = [], "O"
    for tag in tags:
        if tag == "O":
            new = "O"
        else:
            prefix, kind = tag[0], tag[2:]
            if scheme == "bioes":
                new = ("B-" if prefix in "BSU" else "I-") + kind
            elif scheme == "iob1":
                starts = prefix == "B" or prev == "O" or prev[2:] != kind
                new = ("B-" if starts else "I-") + kind
            else:
                new = tag
        out.append(new)
        prev = new
    return out


def spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) for IOB2 tags; a stray I- starts an entity as conlleval does."""
    found, kind, begin = [], None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        if kind is not None and (tag == "O" or tag.startswith("B-") or tag[2:] != kind):
            found.append((kind, begin, i))
            kind = None
        if tag != "O" and kind is None:
            kind, begin = tag[2:], i
    return found


def word_offsets(tokens: Sequence[str]) -> list[tuple[int, int]]:
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append((pos, pos + len(tok)))
        pos += len(tok) + 1
    return offsets


# ---- generative mode: the sentence with its entities bracketed inline -------------------------------
#: ``[ John Smith | PER ] lives in [ Paris | LOC ] .``: every delimiter stands alone between spaces, so each
#: word is written exactly as in the source and tokenizes to the same sub-tokens (a byte-level BPE would
#: make ``[John`` a different token from `` John``); the type comes last, after the model has written the
#: words it is typing. A word that is or begins with a delimiter is written after a backslash (``\[``).
OPEN, SEP, CLOSE, ESCAPE = "[", "|", "]", "\\"
DELIMITERS = frozenset((OPEN, SEP, CLOSE))
#: a type name spread over several tokens by a tokenizer's decoding (``product - name``) is read up to this
MAX_TYPE_TOKENS = 8

#: one entity per mark: (type, entity number); words outside entities have none
Mark = tuple[str, int]


def _starts_with_delimiter(word: str) -> bool:
    return word.lstrip(ESCAPE)[:1] in DELIMITERS


def escape_word(word: str) -> str:
    return ESCAPE + word if _starts_with_delimiter(word) else word


def unescape_word(word: str) -> str:
    return word[1:] if word.startswith(ESCAPE) and _starts_with_delimiter(word) else word


def _markup_tokens(text: str) -> list[str]:
    """The text's tokens at white space, with a ``]`` split off what a decoder glued to it: WordPiece's
    clean-up writes ``] .`` as ``].`` (a word of the sentence never begins with an unescaped ``]``)."""
    tokens = []
    for tok in text.split():
        if tok.startswith(CLOSE) and len(tok) > 1:
            tokens += [CLOSE, tok[1:]]
        else:
            tokens.append(tok)
    return tokens


def render_inline(tokens: Sequence[str], tags: Sequence[str]) -> str:
    """The generation target of a sentence: its words with each entity (of IOB2 ``tags``) bracketed."""
    entities = {a: (kind, b) for kind, a, b in spans(tags)}
    out, i = [], 0
    while i < len(tokens):
        if i in entities:
            kind, end = entities[i]
            out += [OPEN, *map(escape_word, tokens[i:end]), SEP, kind, CLOSE]
            i = end
        else:
            out.append(escape_word(tokens[i]))
            i += 1
    return " ".join(out)


def _type_key(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).casefold()


def parse_inline(text: str, types: Sequence[str]) -> tuple[list[str], list[Mark | None], bool]:
    """(words, a mark per word, malformed) of a generated ``[ words | TYPE ]`` text. Never raises.

    Malformed markup is counted, and what it held is kept as plain words: an opening bracket never
    closed, a second ``[`` before the first closed, a ``|`` or ``]`` out of place, an empty entity, a
    type that is not one of ``types`` (matched without case or spaces). A model that learned the format
    writes none of these; an undertrained one does, and its words still align to the source.
    """
    known = {_type_key(t): t for t in types}
    tokens = _markup_tokens(text)
    words: list[str] = []
    marks: list[Mark | None] = []
    malformed, entities, opened, i = False, 0, None, 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == OPEN:
            malformed |= opened is not None  # the earlier bracket is never closed: its words stay plain
            opened, i = len(words), i + 1
        elif tok == SEP:
            close = _type_end(tokens, i + 1)
            kind = known.get(_type_key("".join(tokens[i + 1:i + 1 + close]))) if close else None
            if kind is not None and opened is not None and len(words) > opened:
                entities += 1
                marks[opened:] = [(kind, entities)] * (len(words) - opened)
            else:
                malformed = True
            opened = None
            i += 2 + close if close is not None else 1  # the type name is no word of the sentence
        elif tok == CLOSE:
            malformed, opened, i = True, None, i + 1
        else:
            words.append(unescape_word(tok))
            marks.append(None)
            i += 1
    return words, marks, malformed or opened is not None


def _type_end(tokens: Sequence[str], start: int) -> int | None:
    """How many tokens from ``start`` hold a type name closed by ``]``; None if a delimiter or nothing comes first."""
    for k, tok in enumerate(tokens[start:start + MAX_TYPE_TOKENS + 1]):
        if tok in DELIMITERS:
            return k if tok == CLOSE and k else None
    return None


def _word_key(word: str) -> str:
    return unicodedata.normalize("NFKC", word).casefold()


def align_tags(source: Sequence[str], words: Sequence[str], marks: Sequence[Mark | None]) -> tuple[list[str], bool]:
    """One IOB2 tag per source word from the generated words and their marks; also whether the model
    wrote the source's words exactly (case aside).

    The words are aligned in order through their characters, spaces left out, so a tokenizer that
    decodes ``U.S.`` as ``U . S .`` or a lower-casing one still aligns. A source word takes the mark
    most of its matched characters carry, when at least half of them matched; else it is O. Generated
    words that match nothing are skipped. B- or I- follows from the entity numbers, so adjacent
    entities of one type stay two, and an entity whose first word was dropped still begins with B-.
    """
    src, out = [_word_key(w) for w in source], [_word_key(w) for w in words]
    exact = src == out
    mark_of = list(marks) if exact else _char_aligned(src, out, marks)
    tags, prev = [], None
    for mark in mark_of:
        tags.append("O" if mark is None else ("I-" if mark == prev else "B-") + mark[0])
        prev = mark
    return tags, exact


def _char_aligned(src: Sequence[str], out: Sequence[str], marks: Sequence[Mark | None]) -> list[Mark | None]:
    from collections import Counter
    from difflib import SequenceMatcher

    owner = [i for i, w in enumerate(src) for _ in w]
    char_marks = [m for w, m in zip(out, marks) for _ in w]
    votes: list[Counter] = [Counter() for _ in src]
    matcher = SequenceMatcher(None, "".join(src), "".join(out), autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            votes[owner[a + k]][char_marks[b + k]] += 1
    found: list[Mark | None] = []
    for word, vote in zip(src, votes):
        matched = sum(vote.values())
        found.append(vote.most_common(1)[0][0] if matched and 2 * matched >= len(word) else None)
    return found


def ner_instruction(types: Sequence[str]) -> str:
    """What a decoder-only model is asked in generative mode, before the sentence."""
    return f"Copy the sentence, marking entities ({', '.join(types)}) as [ words | TYPE ]."


def render_sentence(sentence: dict) -> tuple[str, str | None]:
    """Generative mode's (source, target): the sentence, and the same with its entities marked inline."""
    tags = sentence.get("tags")
    return " ".join(sentence["tokens"]), render_inline(sentence["tokens"], tags) if tags is not None else None


def parse_generated(text: str, tokens: Sequence[str], types: Sequence[str]) -> dict[str, Any]:
    """IOB2 tags for the source ``tokens`` from a generated text, and what the parse had to forgive."""
    words, marks, malformed = parse_inline(text, types)
    tags, exact = align_tags(tokens, words, marks)
    return {"tags": tags, "malformed": malformed, "words_changed": not exact}


# ---- the plugin ------------------------------------------------------------------------------------
@register_task("ner")
class NerTask(Task):
    sample_inputs = ["Angela Merkel visited Paris .", "The European Union met in Brussels on Monday ."]
    description = "named-entity recognition (CoNLL files, seqeval entity F1)"
    Options = NerOptions
    main_score = "f1"
    #: on a decoder each token's tag is scored from what precedes it only (left context): docs/llm.md
    backbone_kinds = ("encoder", "encoder-decoder", "decoder")

    def __init__(self, name=None, options=None):
        super().__init__(name, options)
        self.labels: list[str] = []

    def default_data(self) -> dict[str, str]:
        return {"train": str(DATA_DIR / "ner" / "train.conll"), "dev": str(DATA_DIR / "ner" / "dev.conll")}

    def read(self, path: str) -> Iterator[dict]:
        """Sentences in IOB2, streamed. Scheme auto reads an IOB2 file once: sentences before the first sign of
        another scheme read the same under every scheme; from there the whole file decides (detect_scheme), and
        the rest is read again converted."""
        encoding = self.options.encoding
        if self.options.scheme != "auto":
            for s in iter_conll(path, encoding):
                s["tags"] = to_iob2(s["tags"], self.options.scheme)
                yield s
            return
        done = 0
        for s in iter_conll(path, encoding):
            if _scheme_evidence(s["tags"]) is not None:
                break
            done += 1
            yield s
        else:
            return  # IOB2 (or no entity at all): one pass
        scheme = detect_scheme(iter_conll(path, encoding))
        for i, s in enumerate(iter_conll(path, encoding)):
            if i >= done:
                s["tags"] = to_iob2(s["tags"], scheme)
                yield s

    def read_hub(self, rows, spec: str) -> Iterator[dict]:
        """Rows with ``tokens`` and ``ner_tags`` (ClassLabel ids or strings), as conll2003 on the hub."""
        feature = rows.features.get("ner_tags") if hasattr(rows, "features") else None
        names = getattr(getattr(feature, "feature", None), "names", None)

        def sentences():
            for i, row in enumerate(rows):
                if "tokens" not in row or "ner_tags" not in row:
                    raise DataError("expected fields 'tokens' and 'ner_tags'", spec, i + 1)
                tags = [names[t] if names and isinstance(t, int) else str(t) for t in row["ner_tags"]]
                if row["tokens"]:
                    yield {"tokens": list(row["tokens"]), "tags": tags, "line": i + 1}

        scheme = self.options.scheme if self.options.scheme != "auto" else detect_scheme(sentences())
        for ex in sentences():
            ex["tags"] = to_iob2(ex["tags"], scheme)
            yield ex

    def fit(self, train_examples: Sequence[dict]) -> None:
        found: set[str] = set()
        for s in train_examples:
            found.update(s["tags"])
        self.labels = ["O"] + sorted(found - {"O"}, key=lambda t: (t[2:], t[0]))

    def check(self, examples: Sequence[dict], path: str) -> None:
        known = set(self.labels)
        for s in examples:
            for i, tag in enumerate(s["tags"]):
                if tag not in known:
                    raise DataError(
                        f"tag {tag!r} (word {s['tokens'][i]!r}) never occurred in the training data; "
                        f"known tags: {', '.join(self.labels)}", path, s["line"] + i if s.get("line") else None)

    def texts(self, examples: Sequence[dict]):
        if self.options.mode == "generative":  # a from-scratch tokenizer also learns the prompt, the markup, type names
            return self._generative_texts(examples)
        return (" ".join(s["tokens"]) for s in examples)

    def _generative_texts(self, examples: Sequence[dict]) -> Iterator[str]:
        instruction = ner_instruction(sorted({t[2:] for s in examples for t in s.get("tags", ()) if t != "O"}))
        for s in examples:  # the instruction as often as the model reads it: once per prompt
            yield instruction
            yield render_inline(s["tokens"], s["tags"]) if "tags" in s else " ".join(s["tokens"])

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])

    @property
    def types(self) -> list[str]:
        return sorted({t[2:] for t in self.labels if t != "O"})

    def instruction(self) -> str:
        return ner_instruction(self.types)

    # ---- the model: a tag per word, or the sentence rewritten with its entities marked -----------------
    def modeling(self) -> Modeling:
        o = self.options
        if o.mode == "generative":
            return TextGeneration(self.name, o.generation_options(), instruction=self.instruction(),
                                  response_cue="Marked:", render=render_sentence, parse=self.parse_output,
                                  not_standard="generative NER writes nlpkit's inline markup, which only nlpkit parses "
                                               "back to entities; no standard transformers class does that")
        return WordTagger(self.labels, max_length=o.max_length, dropout=o.dropout, task_name=self.name,
                          prediction=tagged_prediction, log=log)

    def parse_output(self, example: dict, out: Generated) -> dict:
        """Generative mode: the generated text parsed back to tags, then the head mode's prediction (entity
        spans with character offsets; no score, a generated text has no per-word probability)."""
        parsed = parse_generated(out.text, example["tokens"], self.types)
        pred = tagged_prediction(example, parsed["tags"], None)
        pred.update(output=out.text, malformed=parsed["malformed"], words_changed=parsed["words_changed"],
                    at_limit=out.at_limit)
        return pred

    # ---- scoring -------------------------------------------------------------------------------------
    def score(self, predictions, examples) -> dict[str, Any]:
        from seqeval.metrics import accuracy_score, classification_report
        from seqeval.scheme import IOB2

        y_true = [ex["tags"] for ex in examples]
        y_pred = [p["tags"] for p in predictions]
        kwargs = {"mode": "strict", "scheme": IOB2} if self.options.strict else {}
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kwargs)
        micro = report["micro avg"]
        per_type = {k: {"precision": 100 * v["precision"], "recall": 100 * v["recall"], "f1": 100 * v["f1-score"],
                        "support": int(v["support"])}
                    for k, v in report.items() if not k.endswith(" avg")}
        return {"precision": 100 * micro["precision"], "recall": 100 * micro["recall"], "f1": 100 * micro["f1-score"],
                "accuracy": 100 * accuracy_score(y_true, y_pred),
                "mode": "seqeval strict IOB2" if self.options.strict else "seqeval default (conlleval)",
                "per_type": per_type, **generation_counts(predictions)}

    # ---- raw input -----------------------------------------------------------------------------------
    def parse_input(self, item) -> dict:
        if isinstance(item, dict):
            if "tokens" in item:
                tokens = item["tokens"]
                if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t.strip() and
                                                                         not any(c.isspace() for c in t) for t in tokens):
                    raise DataError(f"field 'tokens' of the input must be a non-empty list of words (strings "
                                    f"without spaces), got {str(tokens)[:80]}")
                return {"tokens": list(tokens)}
            item = item.get("text", "")
        item = input_text(item)
        matches = list(WORD_RE.finditer(item))
        return {"tokens": [m.group() for m in matches], "offsets": [m.span() for m in matches], "text": item}

    def format_prediction(self, prediction: dict) -> str:
        if not prediction["entities"]:
            return "(no entities)"
        return "\n".join(f"{e['start']:>5}-{e['end']:<5} {e['type']:<6} {e['text']}"
                         + (f"  ({e['score']:.2f})" if "score" in e else "") for e in prediction["entities"])


def tagged_prediction(ex: dict, tags: Sequence[str], scores: Sequence[float] | None) -> dict:
    """Tags and entity spans with character offsets in the example's text (and, from the head, a mean
    probability per entity)."""
    text = ex.get("text", " ".join(ex["tokens"]))
    offsets = ex.get("offsets") or word_offsets(ex["tokens"])
    entities = []
    for kind, a, b in spans(tags):
        start, end = offsets[a][0], offsets[b - 1][1]
        entity = {"type": kind, "text": text[start:end], "start": start, "end": end}
        if scores is not None:
            entity["score"] = round(sum(scores[a:b]) / (b - a), 4)
        entities.append(entity)
    return {"tags": list(tags), "entities": entities}


def generation_counts(predictions: Sequence[dict]) -> dict[str, int]:
    """Generative mode: how many outputs the parse had to forgive; nothing for the head's predictions."""
    if not predictions or "malformed" not in predictions[0]:
        return {}
    return {"unparsed_outputs": sum(p["malformed"] for p in predictions),
            "changed_outputs": sum(p["words_changed"] for p in predictions),
            "outputs_at_limit": sum(p["at_limit"] for p in predictions)}
