"""Raw text for language-model pretraining: lazy corpora, and token blocks read from a memory-mapped cache.

Fine-tuning data fits in Python lists; a pretraining corpus of several GB does not. So a pretraining task's
"examples" are a ``TextCorpus`` (which files, where each document starts; no text held), and its
"features" are ``TokenBlocks``: fixed-length windows over one token stream that is tokenised once into a
cache folder and memory-mapped from then on. Both are plain Sequences to the core (``len``, ``[i]``), and
both say what they are made of through ``fingerprint()`` (the trainer's resume check) without reading the
text again.

The cache holds the tokens of every document followed by a separator (the tokenizer's SEP, else EOS), as
uint16 when the vocabulary allows it, plus where each document starts. It is keyed by the tokenizer (its
serialised form, added tokens included) and the corpus (each file's path, size and modification time, how
documents are split), so the next run with the same files and tokenizer reuses it, and a changed file or
tokenizer gets a new one. Block size and framing are decided when the cache is opened, so one cache serves
every block size. Writing is atomic: an interrupted tokenisation leaves no cache that looks complete.

Documents: in a .txt file, one per line, or paragraphs separated by blank lines (``documents="auto"``
picks blank-line when a file has a blank line between two non-blank ones); in .jsonl, one record per line
with a ``text`` field; ``.gz`` of either; a folder means its .txt/.jsonl/.gz files in name order. Every
file is read through ``nlpkit.sdk.data`` (one encoding policy; errors name the file and line).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from .cache import cache_root
from .data import read_jsonl, read_text_lines
from .errors import DataError
from .task import Task, TaskOptions

log = logging.getLogger("nlpkit.corpus")

Documents = Literal["auto", "line", "blank-line"]
#: bump when the cache layout changes: old caches are then simply not found
CACHE_FORMAT = 1
#: documents tokenised per call of the fast tokenizer (its batch call runs in Rust threads)
TOKENIZE_CHUNK = 2000
SUFFIXES = (".txt", ".jsonl", ".text")


def default_cache_dir() -> Path:
    """``$NLPKIT_CACHE/corpus``, else ``~/.cache/nlpkit/corpus`` (``$XDG_CACHE_HOME`` respected)."""
    return cache_root("corpus")


# ---- corpora ---------------------------------------------------------------------------------------
def corpus_files(path: str | Path) -> list[Path]:
    """The files a corpus path names: the file itself, or a folder's text files in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _text_suffix(p) is not None)
        if not files:
            raise DataError("no .txt, .jsonl or .gz files in this folder", str(path))
        return files
    if not path.exists():
        raise DataError("file not found", str(path))
    return [path]


def _text_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    return last if last in SUFFIXES else (".txt" if path.suffix.lower() == ".gz" else None)


class TextCorpus(Sequence[dict]):
    """Documents of text files, indexed by (file, first line); the text is read when iterated.

    ``corpus[i]`` re-reads its file up to document ``i`` (for error messages and small checks); iterate
    (``texts()``, ``for doc in corpus``) to go through all of them.
    """

    def __init__(self, files: Sequence[Path], documents: Documents = "auto", encoding: str | None = None,
                 text_field: str = "text", _index: tuple[np.ndarray, np.ndarray] | None = None,
                 _texts: list[str] | None = None, _subset: np.ndarray | None = None):
        self.files = [Path(f) for f in files]
        self.documents, self.encoding, self.text_field = documents, encoding or "utf-8", text_field
        self._texts = _texts
        if _texts is not None:
            self._file_ids = np.zeros(len(_texts), dtype=np.int32)
            self._lines = np.arange(1, len(_texts) + 1, dtype=np.int64)
        elif _index is not None:
            self._file_ids, self._lines = _index
        else:
            self._file_ids, self._lines = self._scan()
        self._subset = _subset

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "TextCorpus":
        """An in-memory corpus (a hub dataset's column, texts given to predict, tests)."""
        return cls([], _texts=[str(t) for t in texts])

    # ---- Sequence ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._subset) if self._subset is not None else len(self._lines)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(self._positions()[i])
        if self._texts is not None:
            return {"text": self._texts[i], "line": i + 1}
        file_id = int(self._file_ids[i])
        same_file = np.flatnonzero(self._file_ids == file_id)
        rank = int(np.searchsorted(same_file, i))
        for k, (line, text) in enumerate(self._file_documents(self.files[file_id])):
            if k == rank:
                return {"text": text, "line": line, "file": str(self.files[file_id])}
        raise DataError(f"document {i + 1} is gone: the file changed after it was read", str(self.files[file_id]))

    def __iter__(self) -> Iterator[dict]:
        wanted = None if self._subset is None else set(self._subset.tolist())
        for i, (file_id, line, text) in enumerate(self._all_documents()):
            if wanted is None or i in wanted:
                yield {"text": text, "line": line, **({"file": str(self.files[file_id])} if self.files else {})}

    def texts(self) -> Iterator[str]:
        for doc in self:
            yield doc["text"]

    def subset(self, indices: Sequence[int]) -> "TextCorpus":
        """The documents at ``indices`` (positions in this corpus), without reading any text."""
        chosen = self._positions()[np.asarray(sorted(indices), dtype=np.int64)]
        return TextCorpus(self.files, self.documents, self.encoding, self.text_field,
                          _index=(self._file_ids, self._lines), _texts=self._texts, _subset=chosen)

    def fingerprint(self) -> str:
        """What the documents are made of: files (path, size, modification time), split rule, subset."""
        digest = hashlib.sha256()
        if self._texts is not None:
            for text in self._texts:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        for f in self.files:
            st = f.stat()
            digest.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        digest.update(f"{self.documents}|{self.encoding}|{self.text_field}|{len(self._lines)}".encode())
        if self._subset is not None:
            digest.update(self._subset.tobytes())
        return f"{len(self)}:{digest.hexdigest()[:16]}"

    # ---- reading ----------------------------------------------------------------------------------
    def _positions(self) -> np.ndarray:
        return self._subset if self._subset is not None else np.arange(len(self._lines), dtype=np.int64)

    def _all_documents(self) -> Iterator[tuple[int, int, str]]:
        if self._texts is not None:
            for i, text in enumerate(self._texts):
                yield 0, i + 1, text
            return
        for file_id, path in enumerate(self.files):
            for line, text in self._file_documents(path):
                yield file_id, line, text

    def _scan(self) -> tuple[np.ndarray, np.ndarray]:
        file_ids, lines = array("i"), array("q")
        for file_id, path in enumerate(self.files):
            for line, _ in self._file_documents(path):
                file_ids.append(file_id)
                lines.append(line)
        return np.frombuffer(file_ids, dtype=np.int32).copy(), np.frombuffer(lines, dtype=np.int64).copy()

    def _file_documents(self, path: Path) -> Iterator[tuple[int, str]]:
        """(first line, text) of each document of one file."""
        if _text_suffix(path) == ".jsonl":
            for line, record in read_jsonl(path, self.encoding):
                text = record.get(self.text_field)
                if not isinstance(text, str):
                    raise DataError(f"expected a string field {self.text_field!r} (the document's text), "
                                    f"got {sorted(record)[:8]}", str(path), line)
                if text.strip():
                    yield line, text
            return
        mode = self.documents
        if mode == "auto":
            mode = "blank-line" if _has_paragraphs(path, self.encoding) else "line"
        if mode == "line":
            for line, text in read_text_lines(path, self.encoding):
                if text.strip():
                    yield line, text
            return
        start, paragraph = 0, []
        for line, text in read_text_lines(path, self.encoding):
            if text.strip():
                if not paragraph:
                    start = line
                paragraph.append(text)
            elif paragraph:
                yield start, "\n".join(paragraph)
                paragraph = []
        if paragraph:
            yield start, "\n".join(paragraph)


def _has_paragraphs(path: Path, encoding: str) -> bool:
    """A blank line between two non-blank lines, within the first 10,000 lines."""
    seen_text = seen_blank = False
    for k, (_, text) in enumerate(read_text_lines(path, encoding)):
        if k >= 10_000:
            break
        if text.strip():
            if seen_blank and seen_text:
                return True
            seen_text = True
        elif seen_text:
            seen_blank = True
    return False


def read_corpus(path: str | Path, documents: Documents = "auto", encoding: str | None = None,
                text_field: str = "text") -> TextCorpus:
    """A lazy corpus of a file or folder (one pass now, to count documents and check the text decodes)."""
    corpus = TextCorpus(corpus_files(path), documents, encoding, text_field)
    if len(corpus) == 0:
        raise DataError("no documents found (the files are empty or hold only blank lines)", str(path))
    return corpus


# ---- the token cache -------------------------------------------------------------------------------
def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def separator_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.sep_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise DataError("the tokenizer has neither a SEP nor an EOS token to separate documents with")


class TokenCache:
    """One corpus tokenised: ``tokens`` (memory-mapped), each document's start, optional word starts."""

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, word_start: np.ndarray | None, folder: Path | None):
        self.tokens, self.doc_starts, self.word_start, self.folder = tokens, doc_starts, word_start, folder
        self.reused = False  # opened from an earlier run's cache
        self.seconds = 0.0  # spent tokenising in this process

    @classmethod
    def build(cls, corpus: TextCorpus | Sequence[dict], tokenizer: Any, word_starts: bool = False,
              cache_dir: str | Path | None = None, progress: bool = False) -> "TokenCache":
        if not isinstance(corpus, TextCorpus):  # a plain list of {"text": ...} records: small, in memory
            corpus = TextCorpus.from_texts(ex["text"] for ex in corpus)
            return cls._write(corpus, tokenizer, word_starts, None, progress)
        key = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer),
                                         "corpus": corpus.fingerprint(), "words": word_starts}).encode()).hexdigest()
        folder = Path(cache_dir or default_cache_dir()) / key[:24]
        if corpus._texts is not None and len(corpus) < 10_000:  # small in-memory corpora: not worth a file
            return cls._write(corpus, tokenizer, word_starts, None, progress)
        if (folder / "meta.json").is_file():
            try:
                cache = cls.open(folder)
                cache.reused = True
                return cache
            except (OSError, ValueError, KeyError) as exc:
                log.warning(f"token cache {folder} is damaged ({exc}); tokenising again")
                shutil.rmtree(folder, ignore_errors=True)
        return cls._write(corpus, tokenizer, word_starts, folder, progress)

    @classmethod
    def open(cls, folder: Path) -> "TokenCache":
        meta = json.loads((folder / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        tokens = np.memmap(folder / "tokens.bin", dtype=dtype, mode="r", shape=(meta["tokens"],)) \
            if meta["tokens"] else np.zeros(0, dtype=dtype)
        starts = np.load(folder / "doc_starts.npy")
        word_start = None
        if meta.get("word_starts"):
            word_start = np.memmap(folder / "word_start.bin", dtype=np.uint8, mode="r", shape=(meta["tokens"],)) \
                if meta["tokens"] else np.zeros(0, dtype=np.uint8)
        if len(starts) != meta["documents"]:
            raise ValueError("document index and meta.json disagree")
        return cls(tokens, starts, word_start, folder)

    @classmethod
    def _write(cls, corpus: TextCorpus, tokenizer: Any, word_starts: bool, folder: Path | None,
               progress: bool) -> "TokenCache":
        """Tokenise every document once, streaming: chunks of documents in, appended arrays out."""
        sep = separator_id(tokenizer)
        dtype = np.uint16 if len(tokenizer) <= 65535 else np.uint32
        t0 = time.perf_counter()
        tmp = None
        if folder is not None:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            tok_out = open(tmp / "tokens.bin", "wb")
            word_out = open(tmp / "word_start.bin", "wb") if word_starts else None
        else:
            tok_parts: list[np.ndarray] = []
            word_parts: list[np.ndarray] = []
        starts = array("q")
        total = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(corpus), desc="tokenise corpus", unit="doc", leave=False)
        try:
            for chunk in _chunks(corpus.texts(), TOKENIZE_CHUNK):
                # verbose=False: whole documents are longer than model_max_length on purpose (blocks come later)
                enc = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False,
                                return_token_type_ids=False, verbose=False)
                ids_parts, word_parts_chunk = [], []
                for k, ids in enumerate(enc["input_ids"]):
                    starts.append(total)
                    ids_parts.append(np.asarray(ids, dtype=dtype))
                    ids_parts.append(np.asarray([sep], dtype=dtype))
                    total += len(ids) + 1
                    if word_starts:
                        word_parts_chunk.append(_word_starts(enc.word_ids(k)))
                        word_parts_chunk.append(np.ones(1, dtype=np.uint8))
                ids_arr = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=dtype)
                words_arr = np.concatenate(word_parts_chunk) if word_parts_chunk else None
                if folder is not None:
                    ids_arr.tofile(tok_out)
                    if word_out is not None and words_arr is not None:
                        words_arr.tofile(word_out)
                else:
                    tok_parts.append(ids_arr)
                    if words_arr is not None:
                        word_parts.append(words_arr)
                if bar is not None:
                    bar.update(len(chunk))
        except BaseException:
            if tmp is not None:
                tok_out.close()
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if bar is not None:
                bar.close()
        doc_starts = np.frombuffer(starts, dtype=np.int64).copy()
        if folder is None:
            tokens = np.concatenate(tok_parts) if tok_parts else np.zeros(0, dtype=dtype)
            words = (np.concatenate(word_parts) if word_parts else np.zeros(0, dtype=np.uint8)) if word_starts else None
            cache = cls(tokens, doc_starts, words, None)
            cache.seconds = time.perf_counter() - t0
            return cache
        tok_out.close()
        if word_out is not None:
            word_out.close()
        np.save(tmp / "doc_starts.npy", doc_starts)
        (tmp / "meta.json").write_text(json.dumps({
            "format": CACHE_FORMAT, "dtype": np.dtype(dtype).name, "tokens": total, "documents": len(doc_starts),
            "word_starts": word_starts, "separator": sep, "files": [str(f) for f in corpus.files],
            "seconds": round(time.perf_counter() - t0, 2)}, indent=2) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        cache = cls.open(folder)
        cache.seconds = time.perf_counter() - t0
        return cache


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _word_starts(word_ids: Sequence[int | None]) -> np.ndarray:
    out = np.ones(len(word_ids), dtype=np.uint8)
    previous = None
    for i, w in enumerate(word_ids):
        if w is not None and w == previous:
            out[i] = 0
        previous = w
    return out


# ---- blocks ----------------------------------------------------------------------------------------
class TokenBlocks(Sequence[dict]):
    """Fixed-length windows over a token cache: a pretraining task's features.

    Packed (the default): the document stream (each document followed by the separator) cut every
    ``content`` tokens, so no block is padded except the last. ``within_document``: each document cut on
    its own (its separator left out), so a block never spans two documents; a document's last piece is
    shorter. Each block is framed by ``prefix_ids`` / ``suffix_ids`` ([CLS] ... [SEP] for encoders).
    """

    def __init__(self, cache: TokenCache, block_size: int, within_document: bool = False,
                 prefix_ids: Sequence[int] = (), suffix_ids: Sequence[int] = ()):
        self.cache, self.block_size = cache, block_size
        self.prefix = np.asarray(list(prefix_ids), dtype=np.int64)
        self.suffix = np.asarray(list(suffix_ids), dtype=np.int64)
        content = block_size - len(self.prefix) - len(self.suffix)
        if content < 1:
            raise DataError(f"block size {block_size} leaves no room for text after {len(self.prefix)} prefix and "
                            f"{len(self.suffix)} suffix tokens")
        self.content = content
        n = len(cache.tokens)
        if within_document:
            ends = np.append(cache.doc_starts[1:], n) - 1  # without the separator
            lengths_doc = np.maximum(ends - cache.doc_starts, 0)
            pieces = (lengths_doc + content - 1) // content
            doc_of = np.repeat(np.arange(len(pieces)), pieces)
            first = np.repeat(np.cumsum(pieces) - pieces, pieces)
            k = np.arange(int(pieces.sum())) - first
            self.starts = cache.doc_starts[doc_of] + k * content
            self.content_lengths = np.minimum(content, ends[doc_of] - self.starts).astype(np.int64)
            self.docs = doc_of.astype(np.int64)
        else:
            self.starts = np.arange(0, n, content, dtype=np.int64)
            self.content_lengths = np.minimum(content, n - self.starts)
            self.docs = np.searchsorted(cache.doc_starts, self.starts, side="right") - 1
        self.num_tokens = int(self.content_lengths.sum() + len(self.starts) * (len(self.prefix) + len(self.suffix)))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        s, n = int(self.starts[i]), int(self.content_lengths[i])
        ids = np.concatenate([self.prefix, self.cache.tokens[s:s + n].astype(np.int64), self.suffix])
        feature = {"input_ids": ids, "example_index": int(self.docs[i]), "block_index": i}
        if self.cache.word_start is not None:
            frame = lambda k: np.ones(k, dtype=bool)  # noqa: E731 - special tokens start a "word" of their own
            feature["word_start"] = np.concatenate([frame(len(self.prefix)),
                                                    self.cache.word_start[s:s + n].astype(bool),
                                                    frame(len(self.suffix))])
        return feature

    def describe(self) -> str:
        """One line for the run's log: documents, tokens, blocks, and where the cache is."""
        cache = self.cache
        where = ("in memory" if cache.folder is None else
                 f"cache {cache.folder}, {'reused' if cache.reused else f'tokenised in {cache.seconds:.1f} s'}")
        return (f"{len(cache.doc_starts):,} documents, {len(cache.tokens):,} tokens -> {len(self):,} blocks of "
                f"up to {self.block_size} ({where})")

    def lengths(self) -> np.ndarray:
        """Each block's length with its frame (what collate pads to and batching groups by)."""
        return self.content_lengths + len(self.prefix) + len(self.suffix)


def pack(examples: TextCorpus | Sequence[dict], tokenizer: Any, block_size: int, within_document: bool = False,
         prefix_ids: Sequence[int] = (), suffix_ids: Sequence[int] = (), word_starts: bool = False,
         cache_dir: str | Path | None = None, progress: bool = False) -> TokenBlocks:
    """Blocks of ``block_size`` tokens from a corpus, tokenised once into the cache (see the module doc)."""
    cache = TokenCache.build(examples, tokenizer, word_starts, cache_dir, progress)
    return TokenBlocks(cache, block_size, within_document, prefix_ids, suffix_ids)


# ---- what every raw-text task shares ---------------------------------------------------------------
@dataclass
class CorpusOptions(TaskOptions):
    """Options every raw-text task has; a plugin's options subclass it and add their own."""

    #: block size in tokens, the frame (special tokens) included
    max_length: int = 128
    #: true: a block never crosses a document boundary (a document's last block is shorter, so padded)
    within_document: bool = False
    #: how a .txt file splits into documents: one per line, paragraphs between blank lines, or auto
    #: (blank-line when the file has a blank line between two texts)
    documents: Documents = "auto"
    #: the field of a .jsonl record (or the column of a hub dataset) that holds the text
    text_field: str = "text"


class CorpusTask(Task):
    """Reading, tokenizer text and feature bookkeeping of a task trained on raw text (the pretraining
    tasks): a subclass adds its options (a ``CorpusOptions`` subclass), blocks, head and metric. Kept here, next to ``TextCorpus`` and ``TokenBlocks``, so three plugins do not copy it."""

    #: the corpus is its own memory-mapped token cache, not an Arrow table of examples (nlpkit.engine.tables)
    tabular = False

    def read(self, path: str) -> TextCorpus:
        """A lazy corpus: .txt (one document per line or blank-line separated), .jsonl, .gz, a folder."""
        o = self.options
        return read_corpus(path, documents=o.documents, encoding=o.encoding, text_field=o.text_field)

    def read_hub(self, rows: Any, spec: str) -> TextCorpus:
        """A hub split's text column (``hub:wikitext:wikitext-2-raw-v1:train``); blank rows are dropped."""
        field = self.options.text_field
        columns = list(getattr(rows, "column_names", None) or [])
        if columns and field not in columns:
            raise DataError(f"no text field {field!r} (fields: {', '.join(columns)}); set the option text_field",
                            spec)
        texts = []
        for number, text in enumerate(rows[field], 1):
            if not isinstance(text, str):
                raise DataError(f"field {field!r} must hold text, got {type(text).__name__}", spec, number)
            if text.strip():
                texts.append(text)
        if not texts:
            raise DataError(f"no non-empty text in field {field!r}", spec)
        return TextCorpus.from_texts(texts)

    def texts(self, examples: Any) -> Iterable[str]:
        if callable(getattr(examples, "texts", None)):
            return examples.texts()
        return (ex["text"] for ex in examples)

    def describe_features(self, features: Any) -> str | None:
        """The corpus line of the run's log (documents, tokens, blocks, cache), from the blocks themselves."""
        describe = getattr(features, "describe", None)
        return describe() if callable(describe) else None

    def feature_lengths(self, features: Any) -> Sequence[int]:
        lengths = getattr(features, "lengths", None)
        return lengths().tolist() if callable(lengths) else super().feature_lengths(features)
