"""The CoNLL reader splits blocks of lines in C; a plain line-by-line reader over read_text_lines is the reference.
Random files with everything that makes a block take the slow path (lines of spaces, -DOCSTART-, one column, new
and bad tags, \\r\\n and lone \\r, byte-order-mark lines, no final line end) must read the same, at any chunk size:
the same sentences and line numbers, or the same error."""
import random

import pytest

from nlpkit import DataError
from nlpkit.sdk import data as data_module
from nlpkit.sdk.data import read_text_blocks, read_text_lines
from nlpkit_tasks.ner import TAG_RE, iter_conll


def reference(path):
    tokens, tags, start = [], [], None
    for lineno, line in read_text_lines(path):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if tokens:
                yield {"tokens": tokens, "tags": tags, "line": start}
            tokens, tags, start = [], [], None
            continue
        if len(cols) < 2:
            raise DataError(f"expected at least 2 columns (WORD ... TAG), got {line[:200]!r}", str(path), lineno)
        if not TAG_RE.match(cols[-1]):
            raise DataError(f"expected a tag like O, B-PER or I-LOC in the last column, got {cols[-1][:100]!r}",
                            str(path), lineno)
        start = lineno if start is None else start
        tokens.append(cols[0])
        tags.append(cols[-1])
    if tokens:
        yield {"tokens": tokens, "tags": tags, "line": start}


def outcome(reader, path):
    try:
        return list(reader(path))
    except DataError as exc:
        return ("error", str(exc))


def random_file(rng: random.Random, bad: bool) -> str:
    words = ["EU", "rejects", "German", "call", "x", "é", "-DOCSTART-"]
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-MISC", "S-ORG", "E-ORG"]
    lines = []
    for _ in range(rng.randint(0, 60)):
        kind = rng.random()
        if kind < 0.15:
            lines.append(rng.choice(["", "", " ", "\t  "]))
        elif kind < 0.18:
            lines.append("-DOCSTART- -X- -X- O")
        elif kind < 0.2:
            lines.append(rng.choice(["\ufeff", " \ufeff "]))
        elif bad and kind < 0.22:
            lines.append(rng.choice(["lonely", "w Bad-TAG", "w B-"]))
        else:
            cols = [rng.choice(words)] + [rng.choice("NN VB -X-".split()) for _ in range(rng.randint(0, 3))]
            lines.append(rng.choice([" ", "\t"]).join(cols + [rng.choice(tags)]))
    ends = [rng.choice(["\n", "\n", "\n", "\r\n", "\r"]) for _ in lines]
    text = "".join(line + end for line, end in zip(lines, ends))
    return text[:-1] if text and rng.random() < 0.2 and text[-1] == "\n" else text


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_block_reader_reads_as_the_line_reader(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(data_module, "CHUNK_BYTES", chunk)
    rng = random.Random(chunk)
    errors = 0
    for i in range(150):
        path = tmp_path / f"f{i}.conll"
        path.write_text(random_file(rng, bad=i % 3 == 0), encoding="utf-8", newline="")
        expected = outcome(reference, path)
        assert outcome(iter_conll, path) == expected, path.read_text(encoding="utf-8")
        errors += isinstance(expected, tuple)
    assert 5 < errors < 100  # both outcomes were exercised


def test_blocks_number_lines_as_read_text_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 5)
    path = tmp_path / "x.txt"
    path.write_bytes("a\r\nb\rc\n\ufeff\nd\n \ufeff\n\ne".encode("utf-8"))
    lines = [(n, t) for first, block in read_text_blocks(path)
             for n, t in enumerate(block[:-1].split("\n") if block.endswith("\n") else block.split("\n"), first)]
    assert lines == list(read_text_lines(path)) == [(1, "a"), (2, "b"), (3, "c"), (5, "d"), (7, ""), (8, "e")]


def test_scheme_evidence_by_regex_equals_the_loop():
    from nlpkit_tasks.ner import _scheme_evidence, _scheme_evidence_loop

    rng = random.Random(0)
    pool = ["O", "B-PER", "I-PER", "I-LOC", "B-LOC", "E-PER", "S-LOC", "U-X", "I-PER-X", "I-PE", "B-P\nER", "I-P\nER"]
    seen = set()
    for _ in range(20000):
        tags = [rng.choice(pool) for _ in range(rng.randint(1, 6))]
        expected = _scheme_evidence_loop(tags)
        assert _scheme_evidence(tags) == expected, tags
        seen.add(expected)
    assert seen == {None, "iob1", "bioes"}
