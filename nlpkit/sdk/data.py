"""Pieces that several plugins share: reading text files (one encoding policy), padding, batching.

Every reader of a data file goes through ``open_text`` / ``read_text_lines`` / ``read_jsonl`` here, so
one policy holds for every task and for ``nlpkit predict``'s stdin:

- a ``.gz`` file (or any file starting with the gzip magic bytes) is un-gzipped; a fake or truncated
  one is a DataError, not a traceback;
- a byte-order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE) decides the encoding and is stripped;
- otherwise the text is decoded strictly in the given encoding (UTF-8 by default, the task option
  ``encoding``); the first undecodable byte is a DataError naming the line and the byte offset;
- NUL bytes mean a binary file (or UTF-16 without a BOM) and are a DataError too;
- lines holding only a byte-order mark (U+FEFF, left by concatenating files; the WNUT-17 dev release
  has one) are skipped, with one warning per file.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import logging
import os
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from .errors import ConfigError, DataError

log = logging.getLogger("nlpkit.data")

GZIP_MAGIC = b"\x1f\x8b"
#: longest first: the UTF-32 LE mark begins with the UTF-16 LE one
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
BOM_CHAR = "\ufeff"
_BOM_ONLY = re.compile(r"[\s\ufeff]*\ufeff[\s\ufeff]*")


def check_encoding(encoding: str, key: str = "encoding") -> str:
    """The codec's canonical name; an unknown name is a ConfigError naming ``key``."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(f"{key}: unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252, utf-16)") from None


def _wide(encoding: str) -> bool:
    """UTF-16/32: a byte 0x0A is not always a newline, so such text is decoded whole."""
    return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


#: how a user names another encoding: a task option for data files (``--encoding`` for predict's stdin;
#: "" where there is no such setting, as for recipes)
OPTION_HINT = "--option encoding=latin-1 (nlpkit evaluate: --encoding latin-1)"


def _undecodable(exc: UnicodeDecodeError, encoding: str, offset: int, line: int, name: str, hint: str) -> DataError:
    bad = exc.object[exc.start:exc.start + 1].hex().upper()
    if codecs.lookup(encoding).name == "utf-8":
        message = (f"not UTF-8 at byte {offset} (line {line}, byte 0x{bad}); re-encode it "
                   f"(e.g. iconv -f latin1 -t utf-8){f' or pass {hint}' if hint else ''}")
    else:
        message = (f"not valid {encoding} at byte {offset} (line {line}, byte 0x{bad}); re-encode it"
                   f"{' or give another encoding' if hint else ''}")
    return DataError(message, name, line)


def _binary(offset: int, line: int, name: str, hint: str) -> DataError:
    fix = f"then give {hint.replace('latin-1', 'utf-16')}" if hint else "then re-encode it as UTF-8"
    return DataError(f"a NUL byte at byte {offset} (line {line}): this is a binary file, not text (or UTF-16/UTF-32 "
                     f"without a byte-order mark: {fix})", name, line)


class _GuardedStream:
    """Reads from a binary stream; gzip and I/O failures become DataErrors naming the file and line."""

    def __init__(self, raw: IO[bytes], name: str, gzipped: bool):
        self.raw, self.name, self.gzipped, self.line = raw, name, gzipped, None

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except EOFError:
            raise DataError("truncated gzip file (it ends before the end-of-stream marker: an interrupted "
                            "download or copy?)", self.name, self.line) from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            what = ("not a gzip file, though its name ends in .gz (if it is plain text, drop the .gz)"
                    if "Not a gzipped file" in str(exc) else f"damaged gzip file ({exc})")
            raise DataError(what, self.name, self.line) from None
        except OSError as exc:
            raise DataError(f"cannot read the file: {exc.strerror or exc}", self.name, self.line) from None

    def read(self, size: int = -1) -> bytes:
        return self._call(self.raw.read, size)

    def chunk(self) -> bytes:
        """About CHUNK_BYTES, up to the end of a line (so no character or \\r\\n is split)."""
        data = self.read(CHUNK_BYTES)
        if data and not data.endswith(b"\n"):
            data += self._call(self.raw.readline)
        return data

    def close(self) -> None:
        self.raw.close()


def _open_binary(path: str | Path) -> _GuardedStream:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", str(path))
    try:
        f = open(path, "rb")
        gzipped = path.suffix.lower() == ".gz" or f.peek(2)[:2] == GZIP_MAGIC
    except OSError as exc:
        raise DataError(f"cannot open the file: {exc.strerror or exc}", str(path)) from None
    return _GuardedStream(gzip.GzipFile(fileobj=f) if gzipped else f, str(path), gzipped)


#: bytes decoded at a time; a chunk is extended to the end of its last line
CHUNK_BYTES = 1 << 16
_BREAK = re.compile(r"\r\n|\r|\n")


def decode_lines(stream: Any, name: str, encoding: str | None = "utf-8", hint: str = OPTION_HINT) -> Iterator[str]:
    """Decoded lines of a binary stream, line ends kept (\\n, \\r\\n or a lone \\r, as ``newline=""``).

    ``name`` is what errors say (a path, or ``<stdin>``); ``hint`` how to name another encoding. A
    byte-order mark overrides ``encoding``. Whole lines are decoded a chunk at a time (the codecs run in
    C); only on a fault is the line and byte offset worked out. ``encoding`` None means UTF-8.
    """
    for text in decode_chunks(stream, name, encoding, hint):
        yield from io.StringIO(text, newline="")


def decode_chunks(stream: Any, name: str, encoding: str | None = "utf-8", hint: str = OPTION_HINT) -> Iterator[str]:
    """decode_lines a chunk of whole lines at a time (about CHUNK_BYTES; line ends kept): what readers that split
    the text themselves take, with no Python step per line."""
    encoding = encoding or "utf-8"
    guarded = stream if isinstance(stream, _GuardedStream) else _GuardedStream(stream, name, False)
    guarded.line = 1
    chunk = guarded.chunk()
    for bom, bom_encoding in BOMS:
        if chunk.startswith(bom):
            chunk, encoding = chunk[len(bom):], bom_encoding
            break
    else:
        if chunk.startswith(GZIP_MAGIC) and not guarded.gzipped:
            raise DataError("this is gzip-compressed data: un-gzip it (or give a file ending in .gz)", name, 1)
    if _wide(encoding):
        yield _decode_whole(chunk + guarded.read(), name, encoding, hint)
        return
    offset, line = 0, 1
    while chunk:
        nul = chunk.find(b"\x00")
        if nul != -1:
            raise _binary(offset + nul, line + _breaks(chunk[:nul], encoding), name, hint)
        try:
            text = chunk.decode(encoding)
        except UnicodeDecodeError as exc:
            where = line + _breaks(chunk[:exc.start], encoding)
            raise _undecodable(exc, encoding, offset + exc.start, where, name, hint) from None
        yield text
        line += _line_count(text)
        offset += len(chunk)
        guarded.line = line
        chunk = guarded.chunk()


def _line_count(text: str) -> int:
    """Line ends in a chunk (a chunk ends at a line end, so a \\r\\n pair is never split)."""
    if "\r" not in text:
        return text.count("\n")
    return len(_BREAK.findall(text))


def _breaks(data: bytes, encoding: str) -> int:
    """Line ends in the (decodable) bytes before a fault, counted as a text file counts them."""
    return len(_BREAK.findall(data.decode(encoding, errors="replace")))


def _decode_whole(data: bytes, name: str, encoding: str, hint: str) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[:exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise _undecodable(exc, encoding, exc.start, line, name, hint) from None
    nul = text.find("\x00")
    if nul != -1:
        raise _binary(len(text[:nul].encode(encoding)), text.count("\n", 0, nul) + 1, name, hint)
    return text


class _StrayMarks:
    """Counts lines holding only byte-order marks; warns once per file, when the file is done."""

    def __init__(self, name: str):
        self.name, self.count, self.first = name, 0, None

    def is_stray(self, text: str, line: int) -> bool:
        if BOM_CHAR not in text or not _BOM_ONLY.fullmatch(text):
            return False
        self.count += 1
        self.first = self.first or line
        return True

    def warn(self) -> None:
        if self.count:
            log.warning(f"{self.name}: skipped {self.count} line(s) holding only a byte-order mark (U+FEFF), "
                        f"first at line {self.first}")


def _text_lines(source: Iterable[str], name: str, blank_stray: bool) -> Iterator[tuple[int, str]]:
    stray = _StrayMarks(name)
    for line, text in enumerate(source, 1):
        if stray.is_stray(text, line):
            if not blank_stray:
                continue
            text = text[len(text.rstrip("\r\n")):]  # keep the line end: csv line numbers stay right
        yield line, text
    stray.warn()


def read_text_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, line without its line end) for every line of a text file, under the policy above.

    Lines holding only byte-order marks are left out (their numbers are skipped), with one warning.
    """
    stream = _open_binary(path)
    try:
        for line, text in _text_lines(decode_lines(stream, str(path), encoding), str(path), blank_stray=False):
            yield line, text.rstrip("\r\n")
    finally:
        stream.close()


def read_text_blocks(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """read_text_lines a block at a time: (number of the block's first line, its lines joined by \\n).

    For readers of millions of short lines (CoNLL), which split a block in C instead of taking a generator step
    per line. Blocks are runs of whole lines: each ends in \\n (\\r\\n and a lone \\r become \\n), except a last
    line that has none. A line holding only byte-order marks is left out, with the block ending before it, so
    that numbers stay right; one warning per file, as read_text_lines gives.
    """
    name = str(path)
    stream, stray, line = _open_binary(path), _StrayMarks(name), 1
    try:
        for text in decode_chunks(stream, name, encoding):
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if BOM_CHAR not in text:
                yield line, text
                line += text.count("\n")
                continue
            start, kept = line, []
            for part in _lines_kept(text):
                if stray.is_stray(part, line):
                    if kept:
                        yield start, "".join(kept)
                    kept, start = [], line + 1
                else:
                    kept.append(part)
                line += 1
            if kept:
                yield start, "".join(kept)
    finally:
        stream.close()
    stray.warn()


def _lines_kept(text: str) -> list[str]:
    """The lines of \\n-ended text, each with its \\n (str.splitlines would also split at \\x0b, \\x85, U+2028...)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def stream_lines(stream: Any, name: str, encoding: str = "utf-8", hint: str = OPTION_HINT) -> Iterator[str]:
    """Lines (line ends stripped) of an open binary stream such as ``sys.stdin.buffer``, under the same
    policy as files; lines holding only byte-order marks are left out, with one warning."""
    for _, text in _text_lines(decode_lines(stream, name, encoding, hint), name, blank_stray=False):
        yield text.rstrip("\r\n")


class TextFile:
    """What ``open_text`` returns: iterate its lines (line ends kept), or ``read()`` it whole.

    Enough of a text file for ``csv.reader``, ``json.load`` and ``for line in f``; decoding errors are
    DataErrors raised where the bad line is read.
    """

    def __init__(self, path: str | Path, encoding: str = "utf-8", hint: str = OPTION_HINT):
        self.name = str(path)
        self._stream = _open_binary(path)
        decoded = decode_lines(self._stream, self.name, encoding, hint)
        self._lines = (text for _, text in _text_lines(decoded, self.name, blank_stray=True))

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def __next__(self) -> str:
        return next(self._lines)

    def readline(self) -> str:
        return next(self._lines, "")

    def read(self) -> str:
        return "".join(self._lines)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> "TextFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_text(path: str | Path, encoding: str = "utf-8", hint: str = OPTION_HINT) -> TextFile:
    """Open a text file under the policy above (gzip, BOM, strict decoding); a missing file is a DataError.

    Lines holding only byte-order marks read as blank lines, so line numbers stay those of the file.
    ``hint`` tells the user how to name another encoding ("" where there is no setting for it).
    """
    return TextFile(path, encoding, hint)


def read_jsonl(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for every non-blank line; bad JSON names the line."""
    for lineno, line in read_text_lines(path, encoding):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", str(path), lineno) from None
        except RecursionError:
            raise DataError("invalid JSON: nested too deeply", str(path), lineno) from None
        if not isinstance(record, dict):
            raise DataError("expected a JSON object per line", str(path), lineno)
        yield lineno, record


def load_json(f: TextFile | str, path: str | Path) -> Any:
    """A whole JSON document (a TextFile or its text); bad JSON names the line and column."""
    text = f if isinstance(f, str) else f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", str(path), exc.lineno) from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", str(path)) from None


def input_text(value: Any, field: str = "text") -> str:
    """A text given to ``predict`` (an argument, a stdin line or a JSON record's field): a non-empty
    string. A wrong type names the field instead of reading as "empty"."""
    if value is not None and not isinstance(value, str):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."
        what = {dict: "a JSON object", list: "a list"}.get(type(value), type(value).__name__)
        raise DataError(f"field {field!r} of the input must be a string, got {what} {shown}")
    if not value or not value.strip():
        raise DataError("empty input text")
    return value


#: CSV fields may be as long as a document; Python's default limit (128 KiB) would refuse long ones
CSV_FIELD_LIMIT = 2**31 - 1


def csv_rows(lines: Iterable[str], path: str | Path, **fmt: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number of the row's first line, cells) for each CSV row; a malformed row is a DataError."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(lines, **fmt)
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", str(path), reader.line_num or start) from None
        yield start, cells
        start = reader.line_num + 1


HUB_PREFIX = "hub:"
HUB_FORM = ("hub:DATASET:SPLIT or hub:DATASET:CONFIG:SPLIT, either with @REVISION after DATASET (e.g. "
            "hub:lhoestq/conll2003:train, hub:nyu-mll/glue:sst2:validation, hub:CogComp/trec@refs/convert/parquet:test)")


def is_hub(path: str) -> bool:
    return str(path).startswith(HUB_PREFIX)


@dataclass(frozen=True)
class HubSpec:
    """``hub:DATASET[@REVISION][:CONFIG]:SPLIT``: DATASET is a hub id or a local folder laid out like one (its
    Parquet/Arrow/JSON/CSV files in split folders or named after the splits, a git clone of the dataset's repo, or
    a folder written by ``DatasetDict.save_to_disk``); REVISION a branch, tag or commit of a hub id."""

    dataset: str
    revision: Optional[str]
    config: Optional[str]
    split: str

    @property
    def local(self) -> Optional[Path]:
        """The folder, when DATASET names one on this machine (a hub id never does: it is not a path here)."""
        path = Path(self.dataset).expanduser()
        return path if path.is_dir() else None

    def text(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.dataset}{rev}{f':{self.config}' if self.config else ''}:{self.split}"


def parse_hub_spec(spec: str) -> HubSpec:
    """The parts of a ``hub:`` spec; a malformed one is a DataError showing the form."""
    parts = str(spec)[len(HUB_PREFIX):].split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise DataError(f"expected {HUB_FORM}, got {spec!r}")
    dataset, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    revision = None
    if "@" in dataset and not Path(dataset).expanduser().exists():  # a folder may have an @ in its name
        dataset, _, revision = dataset.partition("@")
        if not dataset or not revision:
            raise DataError(f"expected {HUB_FORM}: the dataset or the revision after '@' is empty, got {spec!r}")
    return HubSpec(dataset, revision, config, split)


class HubLoadError(DataError):
    """A hub split that could not be loaded; ``offline`` when the hub could not be reached (no network, or
    HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set and the dataset not in the local ``datasets`` cache)."""

    def __init__(self, message: str, spec: str, offline: bool, reason: str):
        self.spec, self.offline, self.reason = spec, offline, reason
        super().__init__(message, spec)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def load_hub_split(spec: str) -> Any:
    """``hub:DATASET[@REVISION][:CONFIG]:SPLIT`` -> the rows of that split (a datasets.Dataset).

    A hub id needs the optional ``datasets`` package and network access (or the dataset in the local
    ``datasets`` cache). A local folder is read offline: a ``save_to_disk`` DatasetDict folder is opened where
    it is; otherwise ``datasets.load_dataset(FOLDER)`` reads its data files (CONFIG: a subfolder of that name if
    there is one, else the folder's own dataset card decides; a plain folder of files has only one).
    """
    hub = parse_hub_spec(spec)
    try:
        import datasets
    except ImportError:
        raise DataError("reading hub datasets needs the 'datasets' package: pip install 'nlpkit[hub]'", spec) from None
    folder = hub.local
    if folder is None and _looks_like_path(hub.dataset):
        raise HubLoadError(f"no folder {hub.dataset!r} (a local copy of a hub dataset is a folder)", spec, False,
                           "folder not found")
    try:
        if folder is not None:
            return _load_local_split(datasets, folder, hub, spec)
        return datasets.load_dataset(hub.dataset, hub.config, split=hub.split, revision=hub.revision)
    except DataError:
        raise
    except Exception as exc:  # offline, unknown id, unknown split, ...
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
        offline = (isinstance(exc, ConnectionError) or "OfflineModeIsEnabled" in reason
                   or "Couldn't reach" in reason) and folder is None
        what = f"the local copy {str(folder)!r}" if folder is not None else f"hub dataset {hub.dataset!r}"
        details = ", ".join(x for x in (f"revision {hub.revision}" if hub.revision else "",
                                        f"config {hub.config}" if hub.config else "", f"split {hub.split}") if x)
        raise HubLoadError(f"could not load {what} ({details}): {reason}", spec, offline, reason) from None


def _load_local_split(datasets: Any, folder: Path, hub: HubSpec, spec: str) -> Any:
    if hub.config and (folder / hub.config).is_dir():  # a copy holding several configs, one folder each
        folder = folder / hub.config
    if (folder / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk: memory-mapped where it is
        splits = datasets.load_from_disk(str(folder))
        if hub.split not in splits:
            raise HubLoadError(f"no split {hub.split!r} in this saved DatasetDict (splits: {', '.join(splits)})",
                               spec, False, "unknown split")
        return splits[hub.split]
    # the folder's dataset card (README.md of a cloned hub repo) may name configs; a plain folder has one
    config = hub.config if hub.config and (folder / "README.md").is_file() else None
    try:
        return datasets.load_dataset(str(folder), config, split=hub.split)
    except ValueError as exc:
        if config and "BuilderConfig" in str(exc):
            return datasets.load_dataset(str(folder), None, split=hub.split)
        raise


def carve_dev_split(examples: Sequence[Any], fraction: float, seed: int, path: str | Path = "train"
                    ) -> tuple[list[Any], list[Any]]:
    """(train, dev): a seeded random ``fraction`` of the examples held out as dev, both in file order.

    Depends only on the number of examples, the fraction and the seed, so the same file always gives
    the same split, whatever the training seed.
    """
    n = len(examples)
    k = max(1, round(n * fraction))
    if k >= n:
        raise DataError(f"dev_split={fraction} of {n} examples leaves nothing to train on", str(path))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    if callable(getattr(examples, "subset", None)):  # a lazy corpus: split it without reading its text
        return (examples.subset([i for i in range(n) if i not in held]), examples.subset(sorted(held)))
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])


def sample_examples(examples: Sequence[Any], k: int, seed: int) -> list[Any]:
    """A seeded random ``k`` of the examples, in file order (the same file, k and seed: the same sample)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[:k])
    if callable(getattr(examples, "subset", None)):
        return examples.subset(keep)
    return [examples[i] for i in keep]


def require_examples(examples: Sequence[Any], path: str | Path) -> None:
    if not examples:
        raise DataError("no examples found (the file is empty or holds only blank lines)", str(path))


def encode_words(tokenizer: Any, words: Sequence[Sequence[str]], max_length: int
                 ) -> tuple[list[list[int]], list[list[Optional[int]]]]:
    """(input ids, word ids) of sentences given as words, with the tokenizer's special tokens, cut at
    ``max_length`` tokens: what ``tokenizer(words, is_split_into_words=True, truncation=True,
    max_length=max_length)`` gives, with ``word_ids(i)`` for each sentence.

    A fast tokenizer's Rust encodings are read directly: transformers' conversion of each encoding into a
    Python dict and back into a BatchEncoding costs about a fifth of a word-level task's encoding time, and a
    million sentences are encoded on a first run. The tokenizer's truncation is set by its own
    ``set_truncation_and_padding`` (as its ``__call__`` does), so the two give the same ids; any other
    tokenizer goes through ``__call__``."""
    if _plain_fast_tokenizer(tokenizer):
        from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

        backend = tokenizer._tokenizer
        tokenizer.set_truncation_and_padding(
            padding_strategy=PaddingStrategy.DO_NOT_PAD, truncation_strategy=TruncationStrategy.LONGEST_FIRST,
            max_length=max_length, stride=0, pad_to_multiple_of=None, padding_side=None)
        split = getattr(tokenizer, "split_special_tokens", False)
        if backend.encode_special_tokens != split:
            backend.encode_special_tokens = split
        encodings = backend.encode_batch(list(words), add_special_tokens=True, is_pretokenized=True)
        return [e.ids for e in encodings], [e.word_ids for e in encodings]
    enc = tokenizer(list(words), is_split_into_words=True, truncation=True, max_length=max_length,
                    return_attention_mask=False, return_token_type_ids=False)
    return list(enc["input_ids"]), [enc.word_ids(i) for i in range(len(words))]


def _plain_fast_tokenizer(tokenizer: Any) -> bool:
    """A fast tokenizer whose class encodes as transformers' base class does (some, like CodeLlama's, do more)."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return False
    cls = type(tokenizer)
    return isinstance(tokenizer, TokenizersBackend) and all(
        getattr(cls, name, None) is getattr(TokenizersBackend, name, None)
        for name in ("__call__", "_encode_plus", "set_truncation_and_padding"))


def pad(sequences: Sequence[Sequence[int]], value: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Right-pad to the longest sequence of this batch (dynamic padding)."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=dtype)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
    return out


def pad_encodings(features: Sequence[dict], pad_id: int, keys: Sequence[str] = ("input_ids",)) -> dict[str, torch.Tensor]:
    """input_ids (+ token_type_ids) padded, with the matching attention mask."""
    batch = {}
    for key in keys:
        if key in features[0]:
            batch[key] = pad([f[key] for f in features], pad_id if key == "input_ids" else 0)
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].size(1))[None, :] < lengths[:, None]).long()
    return batch


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of indices with similar lengths, in random order: less padding, same randomness.

    Shuffled megabatches of ``batch_size * 50`` items are sorted by length and cut into batches,
    and the batches are shuffled. Each pass uses ``seed + epoch`` so every process (and a resumed
    run) sees the same order; ``epoch`` advances on each iteration. Works on numpy arrays: a pass over
    ten million examples costs a few arrays of ten million integers, not ten million Python objects.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True, group: bool = True):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group = group
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def batches(self, epoch: int) -> list[list[int]]:
        return [b.tolist() for b in self.batch_arrays(epoch)]

    def batch_arrays(self, epoch: int) -> list[np.ndarray]:
        n = len(self.lengths)
        rng = np.random.default_rng(self.seed + epoch)
        idx = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group:
            mega = self.batch_size * 50
            keys = -self.lengths[idx]
            for k in range(0, n, mega):  # longest first within each megabatch; ties keep their shuffled order
                order = np.argsort(keys[k:k + mega], kind="stable")
                idx[k:k + mega] = idx[k:k + mega][order]
        batches = [idx[k:k + self.batch_size] for k in range(0, n, self.batch_size)]
        if self.shuffle and self.group:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1
        return iter(batches)


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches: longest first, so padding is minimal and memory peaks early (ties in file order)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
