"""A task's examples and features as memory-mapped Arrow tables, cached by what made them.

Why: a split held as Python dicts costs about 4 KB per short example, so a few million rows no longer fit in
memory, and encoding them again on every run, resume and ``nlpkit evaluate`` costs minutes. Here a split is
read once, streamed into an Arrow file by ``datasets``' writer, and memory-mapped: its pages are file-backed,
so the OS shares and drops them instead of the process holding them. Encoding runs as ``datasets``' batched
``map`` (``num_proc`` processes, a progress bar) into a second Arrow file. Both are keyed by everything that
decides their content, so the second run on the same data opens them and starts at once:

- examples: the task type and version, its options, the file's identity (absolute path, size, modification
  time; a folder's files; a hub split's own fingerprint, a local hub-layout folder's files) and the table format;
- features: the examples' key and the rows selected from them (a carved dev split, a sample), the tokenizer
  (its vocabulary and rules, not its call-time truncation state), the task's options and learned state (label
  maps), the backbone kind and the nlpkit version.

Rows are stored as JSON text, one column: a plugin's examples and features are free-form dicts (optional keys,
nested lists, None), and JSON gives each back exactly as the plugin made it. What the engine itself needs
(each feature's length and example index) are native columns, so batching never decodes a row. The JSON text
of an example is also what the data fingerprint of a checkpoint hashes, so checkpoints written before these
tables existed still resume on the same data.

A task whose ``read`` returns its own lazy, memory-mapped collection (the pretraining corpora of
nlpkit.sdk.corpus, a flat token array packed into blocks) sets ``Task.tabular = False`` and is left as it is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import orjson

from .._version import __version__
from ..sdk.cache import cache_root
from ..sdk.data import HUB_PREFIX, load_hub_split, parse_hub_spec
from ..sdk.errors import DataError, PluginError
from .config import DataSettings

log = logging.getLogger("nlpkit.tables")

#: bump when the layout of the cached tables changes: old entries are then simply not found
FORMAT = 2
#: rows per Arrow record batch when writing, and per batch handed to a task's encode
WRITE_BATCH = 10_000
ENCODE_BATCH = 1_000
#: file suffixes read as tables whatever the task (their rows go through the task's read_hub)
TABLE_SUFFIXES = (".parquet", ".arrow")


_SCRATCH: list[Path] = []


def _scratch_folder() -> Path:
    """One temporary folder per process for --no-cache, removed when the process exits."""
    if not _SCRATCH:
        import atexit

        folder = Path(tempfile.mkdtemp(prefix="nlpkit-data-"))
        atexit.register(shutil.rmtree, folder, True)
        _SCRATCH.append(folder)
    return _SCRATCH[0]


def cache_folder(settings: DataSettings) -> Path:
    """Where this run's tables live: the cache, or a temporary folder when caching is off."""
    if not settings.cache:
        return _scratch_folder()
    return Path(settings.cache_dir).expanduser() if settings.cache_dir else cache_root("data")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def rows_at(rows: Sequence[dict], positions: Sequence[int]) -> list[dict]:
    """``[rows[i] for i in positions]``; one Arrow gather when ``rows`` is a table."""
    if isinstance(rows, ArrowRows):
        return rows.take(positions)
    return [rows[i] for i in positions]


#: the json module's text of an example: what fingerprints before FINGERPRINT_VERSION hashed, and what an example
#: orjson would change is stored as (json.dumps with these settings builds a new encoder on every call)
_LEGACY_EXAMPLE_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str).encode
#: the data fingerprint's text form: "v2:" + count + ":" + hash of the examples' stored texts. Fingerprints
#: without it (nlpkit before examples were written with orjson) hashed the json module's text; a checkpoint
#: holding one is matched by that hash (nlpkit.engine.task_data.data_fingerprint)
FINGERPRINT_VERSION = "v2"


#: dataclasses and dates go to the json module, which refuses them, as before (orjson would write them as dicts/text)
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_EXAMPLE_OPTIONS = _ORJSON_OPTIONS | orjson.OPT_SORT_KEYS


#: what text the json module wrote starts with (JSON allows leading white space; orjson never writes it): such
#: text is read back by the json module, as orjson would read an integer beyond 64 bits as a float
_JSON_MODULE_MARK = " "


def _feature_json(feature: Any) -> str:
    """A feature's stored text: orjson (a feature of int lists in 0.5 us against 7 us for the json module; a
    million features are encoded on a first run and read back every epoch). Keys that are not strings are
    written as json writes them; NaN and infinities become null, as in any strict JSON. What orjson refuses
    (integers beyond 64 bits, other types) goes to the json module, which says what is wrong."""
    try:
        return orjson.dumps(feature, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return _JSON_MODULE_MARK + json.dumps(feature, ensure_ascii=False)


def _loads(text: str) -> Any:
    """orjson's reading (2.5x the json module's), except for text the json module wrote (_JSON_MODULE_MARK)
    or that orjson refuses (NaN, Infinity)."""
    if text[:1] == _JSON_MODULE_MARK:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def example_json(example: Any) -> str:
    """The one text form of an example: stored in the table and hashed by the data fingerprint.

    orjson with sorted keys (a NER sentence in 2 us against 6 us for the json module: a million are written on
    a first read), except where orjson would change the example: text holding ``null`` (orjson writes NaN and
    infinities as null, which reads back as None), or what orjson refuses (lone surrogates, integers beyond 64
    bits) goes to the json module, which keeps NaN as NaN and says what is wrong with the rest; that text starts
    with _JSON_MODULE_MARK, so that ``_loads`` reads it with the json module too. An example always gets the
    same text, so its fingerprint holds."""
    try:
        text = orjson.dumps(example, default=str, option=_EXAMPLE_OPTIONS)
    except orjson.JSONEncodeError:
        return _JSON_MODULE_MARK + _LEGACY_EXAMPLE_JSON(example)
    return _JSON_MODULE_MARK + _LEGACY_EXAMPLE_JSON(example) if b"null" in text else text.decode()


def legacy_fingerprint(examples: Iterable[dict]) -> str:
    """The data fingerprint as nlpkit wrote it before FINGERPRINT_VERSION: the json module's text of every
    example. Computed only to resume a checkpoint that holds one (a pass over the data)."""
    digest, count = hashlib.sha256(), 0
    for example in examples:
        digest.update(_LEGACY_EXAMPLE_JSON(example).encode())
        digest.update(b"\n")
        count += 1
    return f"{count}:{digest.hexdigest()[:16]}"


def texts_fingerprint(texts: Iterable[str]) -> str:
    """The data fingerprint of examples' stored texts (example_json), in order."""
    digest, count = hashlib.sha256(), 0
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
        count += 1
    return _versioned(count, digest)


def _versioned(count: int, digest: Any) -> str:
    return f"{FINGERPRINT_VERSION}:{count}:{digest.hexdigest()[:16]}"


# ---- sources ---------------------------------------------------------------------------------------
def is_table_source(path: str) -> bool:
    """A Parquet or Arrow file, or a folder written by ``datasets``' save_to_disk."""
    p = Path(path)
    if p.is_dir():
        return (p / "dataset_info.json").is_file() or (p / "state.json").is_file()
    return p.suffix.lower() in TABLE_SUFFIXES


def load_table_source(path: str) -> Any:
    """The rows of a Parquet/Arrow file or a saved ``datasets`` folder, as a datasets.Dataset (memory-mapped)."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path)
    try:
        if p.is_dir():
            rows = datasets.load_from_disk(str(p))
            if isinstance(rows, datasets.DatasetDict):
                raise DataError(f"this datasets folder holds several splits ({', '.join(rows)}); name one "
                                f"split's folder, e.g. {p / next(iter(rows))}", path)
            return rows
        if p.suffix.lower() == ".parquet":
            return datasets.Dataset.from_parquet(str(p), cache_dir=str(_scratch_folder() / "parquet"))
        return datasets.Dataset.from_file(str(p))
    except DataError:
        raise
    except Exception as exc:  # a truncated or foreign file: pyarrow says why
        kind = "Parquet" if p.suffix.lower() == ".parquet" else "datasets folder" if p.is_dir() else "Arrow"
        raise DataError(f"cannot read this {kind} file: {type(exc).__name__}: {str(exc)[:300]}", path) from None


#: files up to this size are identified by their bytes too (hashing 256 MB takes a fraction of a second)
HASH_WHOLE = 256 << 20
#: larger files: their size, modification time and the bytes of their first and last MiB
HASH_ENDS = 1 << 20


def file_identity(path: Path) -> list[Any]:
    """A file's absolute path, size, modification time and a hash of its bytes (all of them, or both ends of a
    large file): an edit within the file system's time granularity still changes it."""
    st = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if st.st_size <= HASH_WHOLE:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        else:
            digest.update(f.read(HASH_ENDS))
            f.seek(-HASH_ENDS, os.SEEK_END)
            digest.update(f.read(HASH_ENDS))
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, digest.hexdigest()[:16]]


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def source_identity(path: str) -> Any:
    """What says a source is unchanged: its files' identities (a parallel-text pair names two, a folder many);
    None when a file is missing (the task's reader then says so, naming it). A hub split is identified by
    its own fingerprint once loaded (load_examples)."""
    if str(path).startswith(HUB_PREFIX):
        return None
    try:
        found: set[Path] = set()
        for part in str(path).split(","):
            p = Path(part)
            if p.is_dir():
                found.update(f for f in p.rglob("*") if f.is_file())
                continue
            # the file and its siblings of the same base name: a reader may take its partner from there
            # (translation's train.en -> train.de; a prefix train -> train.en + train.de)
            base = p.name.split(".")[0] if p.exists() else p.name
            siblings = {f for f in p.parent.glob(glob_escape(base) + ".*") if f.is_file()} if p.parent.is_dir() else set()
            if not p.is_file() and not siblings:
                return None
            found.update(siblings | ({p} if p.is_file() else set()))
        return [file_identity(f) for f in sorted(found)]
    except OSError:
        return None


# ---- the table -------------------------------------------------------------------------------------
class ArrowRows(Sequence):
    """A read-only Sequence of dicts over a memory-mapped Arrow table with a JSON column: what the core and the
    plugins see as a split's examples or features (``len``, ``[i]``, iteration, slices)."""

    def __init__(self, table: Any, key: str, indices: Optional[np.ndarray] = None,
                 fingerprint: Optional[str] = None, files: Sequence[str] = ()):
        self.table, self.key, self.indices, self.files = table, key, indices, list(files)
        self._fingerprint = fingerprint
        column = table.column("json")
        self._chunks = column.chunks
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])

    @classmethod
    def open(cls, files: Sequence[str], key: str, fingerprint: Optional[str] = None) -> "ArrowRows":
        import pyarrow as pa
        from datasets.table import MemoryMappedTable

        tables = [MemoryMappedTable.from_file(f).table for f in files]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        return cls(table, key, fingerprint=fingerprint, files=files)

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else self.table.num_rows

    def _row(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} of {n}")
        return int(self.indices[i]) if self.indices is not None else i

    def _text(self, row: int) -> str:
        chunk = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self._chunks[chunk][row - int(self._starts[chunk])].as_py()

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        return _loads(self._text(self._row(i)))

    def take(self, positions: Sequence[int]) -> list[dict]:
        """Several rows at once (a training batch)."""
        rows = np.asarray(positions, dtype=np.int64)
        if self.indices is not None:
            rows = self.indices[rows]
        return [_loads(t) for t in self._gather(rows)]

    def _gather(self, rows: np.ndarray) -> list[str]:
        """The JSON texts of table rows ``rows``, chunk by chunk: a take over the whole chunked column would first
        concatenate every chunk into one array, copying the mapped table into the process's own memory."""
        import pyarrow as pa

        chunk_of = np.searchsorted(self._starts, rows, side="right") - 1
        out: list[Any] = [None] * len(rows)
        for chunk in np.unique(chunk_of):
            where = np.nonzero(chunk_of == chunk)[0]
            texts = self._chunks[chunk].take(pa.array(rows[where] - self._starts[chunk])).to_pylist()
            for i, text in zip(where.tolist(), texts):
                out[i] = text
        return out

    def texts(self, block: int = WRITE_BATCH) -> Iterator[str]:
        """Each row's JSON text, in order, a block at a time."""
        if self.indices is None:
            for chunk in self._chunks:
                yield from chunk.to_pylist()
            return
        for start in range(0, len(self.indices), block):
            yield from self._gather(self.indices[start:start + block])

    def __iter__(self) -> Iterator[dict]:
        for text in self.texts():
            yield _loads(text)

    def subset(self, positions: Iterable[int]) -> "ArrowRows":
        """The rows at ``positions`` (a carved dev split, a sample): an index over the same mapped table."""
        rows = np.fromiter(positions, dtype=np.int64)
        if self.indices is not None:
            rows = self.indices[rows]
        key = _digest(self.key, hashlib.sha256(rows.tobytes()).hexdigest())
        return ArrowRows(self.table, key, rows, files=self.files)

    def column(self, name: str) -> np.ndarray:
        """A native column (features: length, example_index) as a numpy array, in this view's order."""
        values = self.table.column(name).to_numpy()
        return values[self.indices] if self.indices is not None else values

    def fingerprint(self) -> str:
        """The data fingerprint a checkpoint's data position refers to: the same hash of the same rows as
        nlpkit.engine.task_data.data_fingerprint computes over a list."""
        if self._fingerprint is None:
            # a view's fingerprint is kept beside its table: a carved training split is hashed once, not per run
            kept = Path(self.files[0]).parent / f"fingerprint-{self.key}.json" if self.files else None
            saved = _meta(kept.parent, kept.name) if kept is not None else None
            if saved is not None:
                self._fingerprint = saved["fingerprint"]
                return self._fingerprint
            self._fingerprint = texts_fingerprint(self.texts())
            if kept is not None:
                try:
                    _write_atomically(kept.parent, kept.name,
                                      lambda tmp: tmp.write_text(json.dumps({"fingerprint": self._fingerprint})))
                except OSError:
                    pass  # a read-only cache still works, it only hashes again next time
        return self._fingerprint


class FeatureRows(ArrowRows):
    """Encoded features: each one's length (for length-grouped batches) is read from a column, not a row."""

    def lengths(self) -> np.ndarray:
        return self.column("length")

    def subset(self, positions: Iterable[int]) -> "FeatureRows":
        view = super().subset(positions)
        return FeatureRows(view.table, view.key, view.indices, files=view.files)


# ---- building and finding tables -------------------------------------------------------------------
def _write_atomically(folder: Path, name: str, write) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    write(tmp)
    os.replace(tmp, target)
    return target


def _meta(folder: Path, name: str) -> Optional[dict]:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None


def load_examples(task: Any, path: str, settings: DataSettings = DataSettings()) -> Any:
    """A split's examples: an ArrowRows table for a tabular task (read once, then from the cache), else what the
    task's ``read`` returns (a lazy corpus)."""
    if not getattr(task, "tabular", True):
        return _read_rows(task, path)

    rows_source = None
    identity = source_identity(path)
    if str(path).startswith(HUB_PREFIX):
        folder = parse_hub_spec(path).local
        if folder is not None:  # a local copy of a hub dataset: its files say whether it changed (read on a miss)
            identity = [path, source_identity(str(folder))]
        else:
            rows_source = load_hub_split(path)
            identity = [path, getattr(rows_source, "_fingerprint", None)]
    key = _digest("examples", FORMAT, __version__, task.type_name, getattr(task, "version", 1),
                  task.options_dict(), identity)
    if settings.cache:
        folder = cache_folder(settings) / key
    else:  # nothing is looked up or kept: a folder of its own in this process's scratch space
        folder = Path(tempfile.mkdtemp(prefix=f"{key[:8]}-", dir=_scratch_folder()))
    meta = _meta(folder, "examples.json") if identity is not None and settings.cache else None
    if meta is not None:
        try:
            table = ArrowRows.open([str(folder / f) for f in meta["files"]], key, meta["fingerprint"])
            log.info(f"{task.name}: examples of {path}: cached ({folder})")
            table.cached = True
            return table
        except Exception as exc:  # a damaged entry is rebuilt, not trusted
            log.warning(f"{task.name}: the cached examples in {folder} are damaged ({exc}); reading {path} again")
    rows = _read_rows(task, path, rows_source)
    return _store_examples(task, rows, path, folder, key)


def _read_rows(task: Any, path: str, rows_source: Any = None) -> Iterable[dict]:
    """The task's reader over a local file, or its read_hub over a hub split, Parquet, Arrow or datasets folder."""
    if rows_source is not None:
        return task.read_hub(rows_source, path)
    if str(path).startswith(HUB_PREFIX):
        return task.read_hub(load_hub_split(path), path)
    if is_table_source(path):
        return task.read_hub(load_table_source(path), path)
    return task.read(path)


def _store_examples(task: Any, rows: Iterable[dict], path: str, folder: Path, key: str) -> ArrowRows:
    from datasets import Features, Value
    from datasets.arrow_writer import ArrowWriter

    digest, count = hashlib.sha256(), 0
    features = Features({"json": Value("string")})

    def write(tmp: Path) -> None:
        nonlocal count
        writer = ArrowWriter(features=features, path=str(tmp), writer_batch_size=WRITE_BATCH)
        batch: list[str] = []
        try:
            def flush() -> None:  # the fingerprint hashes "text\n" per example: one update per batch is the same
                nonlocal count, batch
                digest.update(("\n".join(batch) + "\n").encode("utf-8", "surrogatepass"))
                writer.write_batch({"json": batch})
                count += len(batch)
                batch = []

            for example in _progress(rows, f"reading {task.name}", "ex"):
                batch.append(example_json(example))
                if len(batch) >= WRITE_BATCH:
                    flush()
            if batch:
                flush()
            writer.finalize()
        except BaseException:
            writer.close()
            tmp.unlink(missing_ok=True)
            raise

    target = _write_atomically(folder, "examples.arrow", write)
    fingerprint = _versioned(count, digest)
    meta = {"files": [target.name], "fingerprint": fingerprint, "count": count, "source": str(path)}
    _write_atomically(folder, "examples.json", lambda tmp: tmp.write_text(json.dumps(meta)))
    table = ArrowRows.open([str(target)], key, fingerprint)
    table.cached = False
    return table


_PROGRESS = {"on": True}


def _progress(items: Iterable[Any], desc: str, unit: str) -> Iterable[Any]:
    if not _PROGRESS["on"]:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False, mininterval=1.0)


def fit_task(task: Any, train: Any, settings: DataSettings = DataSettings()) -> bool:
    """``task.fit(train)``, or, for a table fitted before with the same task type, version and options, the
    learned state (label maps) that fit gave then, through ``load_state_dict``: a pass over millions of rows
    saved. True when the state came from the cache."""
    if not (isinstance(train, ArrowRows) and settings.cache):
        task.fit(train)
        return False

    key = _digest("fit", FORMAT, __version__, train.key, task.type_name, getattr(task, "version", 1), task.options_dict())
    folder = Path(train.files[0]).parent
    saved = _meta(folder, f"fit-{key}.json")
    if saved is not None:
        task.load_state_dict(saved["state"])
        return True
    task.fit(train)
    state = task.state_dict()
    _write_atomically(folder, f"fit-{key}.json", lambda tmp: tmp.write_text(json.dumps({"state": state})))
    return False


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's vocabulary and rules. Its truncation and padding state is left out: a fast tokenizer
    records the last call's settings there, which would change the key after the first encode."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        extra = [type(tokenizer).__name__, getattr(tokenizer, "padding_side", None),
                 getattr(tokenizer, "truncation_side", None), str(getattr(tokenizer, "chat_template", None)),
                 sorted((k, str(v)) for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items())]
        return _digest(spec, extra)
    from datasets.fingerprint import Hasher

    return Hasher.hash(tokenizer)


def encode_split(task: Any, examples: Any, split: str, settings: DataSettings = DataSettings()) -> tuple[Any, str]:
    """(features, what was done in words) for a split's examples; a table's features come from the cache when
    nothing that decides them changed, else from the task's ``encode`` over batches of ENCODE_BATCH examples."""
    if not isinstance(examples, ArrowRows):
        return task.encode(examples), ""

    key = _digest("features", FORMAT, __version__, examples.key, task.type_name, getattr(task, "version", 1),
                  task.options_dict(), task.state_dict(), getattr(task, "backbone_kind", None),
                  tokenizer_fingerprint(task.tokenizer) if task.tokenizer is not None else None)
    folder = Path(examples.files[0]).parent  # beside the examples: one folder per source to delete
    name = f"features-{key}"
    meta = _meta(folder, name + ".json") if settings.cache else None
    if meta is not None:
        try:
            features = FeatureRows.open([str(folder / f) for f in meta["files"]], key)
            for message in meta.get("warnings", []):
                log.warning(message)
            return features, f"features: cached ({folder / meta['files'][0]})"
        except Exception as exc:
            log.warning(f"{task.name}: the cached features in {folder} are damaged ({exc}); encoding again")
    t0 = time.perf_counter()
    files, warnings = _encode_with_map(task, examples, folder, name, settings, split)
    meta = {"files": files, "warnings": warnings, "examples": len(examples), "seconds": time.perf_counter() - t0}
    _write_atomically(folder, name + ".json", lambda tmp: tmp.write_text(json.dumps(meta)))
    features = FeatureRows.open([str(folder / f) for f in files], key)
    return features, f"encoded {len(examples)} examples into {len(features)} features ({folder / files[0]})"


class _Collect(logging.Handler):
    """Warnings a task's encode logs, gathered over all batches so that they are said once, not per batch."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _encode_batch(batch: dict, indices: list[int], task: Any) -> dict:
    examples = [_loads(t) for t in batch["json"]]
    features = task.encode(examples)
    texts, lengths, owners = [], [], []
    for f in features:
        local = f.get("example_index")
        if not isinstance(local, int) or not 0 <= local < len(examples):
            raise RuntimeError(f"task {task.name!r}: encode gave a feature with example_index {local!r} for a batch "
                               f"of {len(examples)} examples")
        f = dict(f, example_index=indices[local])
        try:
            texts.append(_feature_json(f))
        except (TypeError, ValueError) as exc:
            raise PluginError(f"task {task.name!r}: encode gave a feature that is not JSON-serialisable ({exc}); "
                              "features are stored as JSON rows: use lists (tensor.tolist()), not tensors or "
                              "arrays, or set the task's tabular = False") from None
        lengths.append(int(task.feature_length(f)))
        owners.append(indices[local])
    return {"json": texts, "length": lengths, "example_index": owners}


def _encode_with_map(task: Any, examples: ArrowRows, folder: Path, name: str, settings: DataSettings,
                     split: str) -> tuple[list[str], list[str]]:
    """datasets' batched map over the examples' table; its cache files land in ``folder`` under ``name``."""
    import datasets

    rows = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in examples.files])
    if examples.indices is not None:
        rows = rows.select(examples.indices)
    out_features = datasets.Features({"json": datasets.Value("string"), "length": datasets.Value("int32"),
                                      "example_index": datasets.Value("int64")})
    num_proc = settings.num_proc if settings.num_proc > 1 and len(examples) >= 2 * ENCODE_BATCH else None
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f".{name}.{os.getpid()}.tmp"
    scratch.mkdir(exist_ok=True)
    collect = _Collect()
    watched = [logging.getLogger("nlpkit"), logging.getLogger("nlpkit_tasks")]
    for logger in watched:
        logger.addHandler(collect)
    saved_propagate = [logger.propagate for logger in watched]
    for logger in watched:
        logger.propagate = False
    shown = datasets.utils.logging.is_progress_bar_enabled()
    if not _PROGRESS["on"]:
        datasets.disable_progress_bars()
    try:
        out = rows.map(_encode_batch, batched=True, batch_size=ENCODE_BATCH, with_indices=True,
                       fn_kwargs={"task": task}, remove_columns=["json"], features=out_features,
                       num_proc=num_proc, cache_file_name=str(scratch / "features.arrow"),
                       new_fingerprint=name.split("-")[-1], load_from_cache_file=False,
                       desc=f"encoding {task.name} {split} ({len(examples)} examples)")
        produced = [Path(f["filename"]) for f in out.cache_files]
        files = []
        for i, f in enumerate(produced):
            target = folder / f"{name}-{i:05d}.arrow"
            os.replace(f, target)
            files.append(target.name)
        del out
    finally:
        for logger, propagate in zip(watched, saved_propagate):
            logger.removeHandler(collect)
            logger.propagate = propagate
        if shown and not datasets.utils.logging.is_progress_bar_enabled():
            datasets.enable_progress_bars()
        shutil.rmtree(scratch, ignore_errors=True)
    warnings = _summarise(collect.records)
    for message in warnings:
        log.warning(message)
    return files, warnings


def _summarise(records: list[logging.LogRecord]) -> list[str]:
    """The first warning of each kind (its first 40 characters), with how many batches said the same."""
    kinds: dict[str, list[str]] = {}
    for record in records:
        message = record.getMessage()
        kinds.setdefault(message[:40], []).append(message)
    out = []
    for messages in kinds.values():
        more = f" (and {len(messages) - 1} more batch(es) of {ENCODE_BATCH} examples said the same)" if len(messages) > 1 else ""
        out.append(messages[0] + more)
    return out


def set_progress(on: bool) -> None:
    """Progress bars for reading and encoding (off in quiet runs and tests)."""
    _PROGRESS["on"] = on
