"""What the three benchmark scripts share: data slices, the device line, worker subprocesses, tables.

Every timed run happens in a fresh Python process (``python SCRIPT --worker SPEC.json``) so that peak
RSS is that run's own and no run inherits another's warm caches or allocator state. The parent only
orchestrates: it alternates the two systems, collects one JSON result per run and prints the tables.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Slices, the tiny quick-mode backbone and the predict benchmark's model live here (git-ignored).
CACHE = Path(os.environ.get("NLPKIT_BENCH_CACHE", HERE / ".cache"))
#: Bundled with the project: the --quick backbone's vocabulary is built from it.
BUNDLED_NER = ROOT / "tasks" / "data" / "ner" / "train.conll"

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TRANSFORMERS_VERBOSITY": "error"}


def offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


# ---- data -----------------------------------------------------------------------------------------
def data_root(given: str | None = None) -> Path:
    """The shared benchmark folder: --data-root, $NLPKIT_BENCHMARK_DATA, or ../shared/benchmarks."""
    candidates = [given, os.environ.get("NLPKIT_BENCHMARK_DATA"), ROOT.parent / "shared" / "benchmarks",
                  ROOT.parent.parent / "shared" / "benchmarks", "/work/shared/benchmarks"]
    for c in candidates:
        if c and (Path(c) / "conll2003").is_dir():
            return Path(c)
    sys.exit("benchmark data not found: pass --data-root DIR (the folder holding conll2003/ and sst2/) "
             "or set NLPKIT_BENCHMARK_DATA")


def read_conll_sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    """(words, tags) per sentence of a CoNLL file (word first, tag last; -DOCSTART- skipped)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    sentences, words, tags = [], [], []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            cols = line.split()
            words.append(cols[0])
            tags.append(cols[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def write_conll(sentences: Iterable[tuple[list[str], list[str]]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for words, tags in sentences:
            f.write("".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n")
    os.replace(tmp, path)
    return path


def conll_slices(root: Path, n_train: int, n_dev: int) -> dict[str, Path]:
    """The first n_train sentences of CoNLL-2003 train and the first n_dev of valid, as 2-column files."""
    out = {}
    for split, source, n in (("train", "train.txt.gz", n_train), ("dev", "valid.txt.gz", n_dev)):
        target = CACHE / "data" / f"conll2003-{split}-{n}.conll"
        if not target.exists():
            sentences = read_conll_sentences(root / "conll2003" / source)
            if n > len(sentences):
                sys.exit(f"conll2003 {split} has only {len(sentences)} sentences (asked for {n})")
            write_conll(sentences[:n], target)
        out[split] = target
    return out


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """(label, sentence) rows of a GLUE-style TSV with a header (SST-2 layout: label<TAB>sentence)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        lines = [line.rstrip("\r\n") for line in f]
    header = lines[0].split("\t")
    li, si = header.index("label"), header.index("sentence")
    rows = []
    for line in lines[1:]:
        if line.strip():
            cols = line.split("\t")
            rows.append((cols[li], cols[si]))
    return rows


def sst2_slices(root: Path, n_train: int, n_dev: int) -> dict[str, Path]:
    """SST-2 has no dev set here: dev = n_dev rows of whole sentence groups (sst2_group_split, seed 0), so no dev
    row is a phrase of a training sentence; train = the first n_train rows of the rest, in file order.

    (Until this was group-aware, dev was the file's last n_dev rows: phrases of sentences whose other phrases were
    in train, which inflated dev accuracy. The file names say ``grouped`` so an old slice is never reused.)"""
    out = {}
    targets = {split: CACHE / "data" / f"sst2-grouped{n_dev}-{split}-{n}.tsv"
               for split, n in (("train", n_train), ("dev", n_dev))}
    if not all(t.exists() for t in targets.values()):
        rows = read_tsv(root / "sst2" / "train.tsv.gz")
        if n_train + n_dev > len(rows):
            sys.exit(f"sst2 has only {len(rows)} rows")
        train, (dev,), overlap = sst2_group_split(rows, [n_dev], seed=0)
        if len(train) < n_train:
            sys.exit(f"sst2 has only {len(train)} rows beside a grouped dev of {n_dev} (asked for {n_train})")
        print(f"SST-2 dev: {len(dev)} rows in whole sentence groups; {overlap_words(overlap)}", flush=True)
        for split, part in (("train", train[:n_train]), ("dev", dev)):
            targets[split].parent.mkdir(parents=True, exist_ok=True)
            tmp = targets[split].with_suffix(".tmp")
            tmp.write_text("label\tsentence\n" + "".join(f"{lab}\t{s}\n" for lab, s in part), encoding="utf-8")
            os.replace(tmp, targets[split])
    for split, target in targets.items():
        out[split] = target
    return out


# ---- SST-2: phrases of one sentence stay on one side ---------------------------------------------------
class PhraseIndex:
    """Texts (space-separated words) indexed by their words and word bigrams, to find the indexed texts that contain
    a phrase on word boundaries without scanning them all: a phrase is looked up under its rarest bigram (its word,
    if it has one word), and only the texts listed there are compared as strings."""

    def __init__(self) -> None:
        self.padded: list[str] = []
        self.lengths: list[int] = []
        self.postings: dict[tuple[str, ...], list[int]] = {}

    @staticmethod
    def _keys(words: Sequence[str]) -> set[tuple[str, ...]]:
        if len(words) == 1:
            return {(words[0],)}
        return {(a, b) for a, b in zip(words, words[1:])}

    def add(self, text: str) -> int:
        words = text.split()
        i = len(self.padded)
        self.padded.append(f" {' '.join(words)} ")
        self.lengths.append(len(words))
        for key in self._keys(words) | {(w,) for w in words}:
            self.postings.setdefault(key, []).append(i)
        return i

    def containing(self, text: str) -> list[int]:
        """Ids of the indexed texts that hold ``text`` as a run of whole words (an equal text included)."""
        words = text.split()
        if not words:
            return []
        lists = [self.postings.get(k, []) for k in self._keys(words)]
        shortest = min(lists, key=len)
        needle = f" {' '.join(words)} "
        return [i for i in shortest if self.lengths[i] >= len(words) and needle in self.padded[i]]


def sentence_groups(texts: Sequence[str]) -> list[int]:
    """For every text, the index of its group's root: the longest text that contains it on word boundaries (ties:
    the earliest), or itself when no longer text contains it. Identical texts share a group.

    The longest container of a text is never inside a still longer text (that one would contain the text too and
    be longer), so groups are one level deep: roots are the texts no longer text contains, and each is compared
    only with roots. Texts are taken longest first, so every possible container is indexed before it is needed.
    """
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(" ".join(t.split()), i)
    order = sorted(first, key=lambda t: (-len(t.split()), first[t]))
    index, root_row, root_of = PhraseIndex(), [], {}
    for t in order:
        found = index.containing(t)
        if found:
            best = max(found, key=lambda r: (index.lengths[r], -root_row[r]))
            root_of[t] = root_row[best]
        else:
            index.add(t)
            root_row.append(first[t])
            root_of[t] = first[t]
    return [root_of[" ".join(t.split())] for t in texts]


class TrainingTexts:
    """Training texts, to ask of held-out texts which occur verbatim in one of them (``overlap``)."""

    def __init__(self, train: Iterable[str]):
        self.exact = {" ".join(t.split()) for t in train}
        self.index = PhraseIndex()
        for t in sorted(self.exact, key=lambda t: -len(t.split())):  # only texts no longer training text contains
            if not self.index.containing(t):
                self.index.add(t)

    def overlap(self, held_out: Sequence[str]) -> dict[str, int]:
        """How many held-out texts (rows, duplicates counted) occur verbatim in a training text:
        ``inside_training_row`` as a run of whole words of one (an identical text included),
        ``equal_to_training_row`` identical to one."""
        inside = equal = 0
        for t in held_out:
            t = " ".join(t.split())
            if t in self.exact:
                equal += 1
                inside += 1
            elif self.index.containing(t):
                inside += 1
        return {"held_out_rows": len(held_out), "inside_training_row": inside, "equal_to_training_row": equal}


def verbatim_overlap(held_out: Sequence[str], train: Iterable[str]) -> dict[str, int]:
    """``TrainingTexts(train).overlap(held_out)``."""
    return TrainingTexts(train).overlap(held_out)


def overlap_words(overlap: dict[str, int]) -> str:
    n = max(overlap["held_out_rows"], 1)
    return (f"of {overlap['held_out_rows']:,} held-out rows, {overlap['inside_training_row']:,} "
            f"({100 * overlap['inside_training_row'] / n:.1f}%) occur verbatim inside a training row and "
            f"{overlap['equal_to_training_row']:,} ({100 * overlap['equal_to_training_row'] / n:.1f}%) are identical "
            "to one")


def take_groups(group_of: Sequence[Any], sizes: Sequence[int], seed: int) -> tuple[list[int], list[list[int]]]:
    """Held-out parts of whole groups: the groups in a seeded random order, each given to the first part it still
    fits in (so every part has exactly its size unless the groups run out, and a large group late in the order is
    passed over rather than overshooting). Returns (the rest's indices, each part's indices), in input order."""
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(g, []).append(i)
    order = list(members)
    random.Random(seed).shuffle(order)
    parts: list[list[int]] = [[] for _ in sizes]
    rest: list[int] = []
    for g in order:
        for part, size in zip(parts, sizes):
            if len(part) + len(members[g]) <= size:
                part.extend(members[g])
                break
        else:
            rest.extend(members[g])
    return sorted(rest), [sorted(p) for p in parts]


def sst2_group_split(rows: Sequence[tuple[str, str]], sizes: Sequence[int], seed: int = 0
                     ) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]], dict[str, Any]]:
    """Held-out parts of SST-2 train rows ((label, text), lower-cased PTB tokens) that keep sentences apart.

    SST-2's train file holds every phrase of its sentences as a row of its own, so a random carve puts phrases of
    training sentences (and whole training rows' phrases) into dev. Here every row is grouped with the longest row
    that contains it on word boundaries (``sentence_groups``) and a group goes to one side only (``take_groups``:
    part i gets ``sizes[i]`` rows). What can still overlap is a phrase shared by two sentences ("the film"): the
    returned overlap counts the held-out rows that occur verbatim inside a training row, and those identical to one
    (``verbatim_overlap``), over all parts together and per part (``parts``).

    Returns (training rows, the parts' rows, overlap), rows in file order.
    """
    groups = sentence_groups([text for _, text in rows])
    rest, parts = take_groups(groups, sizes, seed)
    train = [rows[i] for i in rest]
    held = [[rows[i] for i in p] for p in parts]
    seen = TrainingTexts(t for _, t in train)
    overlap: dict[str, Any] = seen.overlap([t for p in held for _, t in p])
    overlap["parts"] = [seen.overlap([t for _, t in p]) for p in held]
    overlap["groups"] = len(set(groups))
    return train, held, overlap


# ---- backbone -------------------------------------------------------------------------------------
def resolve_backbone(spec: str) -> str:
    """A folder both nlpkit and transformers can load: an alias (minilm) or a local model folder."""
    from nlpkit.engine.backbone import PRESETS, resolve_alias

    if spec in PRESETS:
        sys.exit(f"backbone {spec!r} is an nlpkit from-scratch preset; the Hugging Face side needs a model "
                 "folder. Use --backbone minilm, a model folder, or --quick (a tiny BERT folder made here).")
    folder = resolve_alias(spec)
    if not (Path(folder) / "config.json").is_file():
        sys.exit(f"backbone {spec!r} -> {folder!r} is not a local model folder with config.json")
    return folder


def tiny_bert_folder() -> str:
    """A randomly initialised 2-layer BERT (hidden 128) for --quick runs.

    Its WordPiece vocabulary (characters, ##characters and the 2,000 most frequent lower-cased words) comes
    from the NER data bundled with nlpkit, so --quick needs no model package and gives the same folder on
    every machine; words outside it split into characters, which is all a plumbing check needs.
    """
    folder = CACHE / "tiny-bert-bundled-vocab"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return str(folder)
    from collections import Counter

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = Counter(w.lower() for sentence, _ in read_conll_sentences(BUNDLED_NER) for w in sentence)
    chars = sorted({c for w in words for c in w})
    frequent = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:2000]]
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
                                *frequent]))
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE))
    BertModel(config, add_pooling_layer=True).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return str(folder)


# ---- device ---------------------------------------------------------------------------------------
def device_info() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0),
                "bf16": bool(torch.cuda.is_bf16_supported()), "threads": torch.get_num_threads()}
    return {"type": "cpu", "name": cpu_name(), "bf16": True, "threads": torch.get_num_threads()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_line(info: dict[str, Any]) -> str:
    if info["type"] == "cuda":
        return f"device: GPU {info['name']} (CUDA)"
    return (f"device: no GPU found, running on the CPU: {info['name']}, {os.cpu_count()} logical cores, "
            f"torch threads {info['threads']}")


def pick_precision(requested: str, info: dict[str, Any]) -> str:
    """auto: bf16 on a GPU that has it, fp32 on the CPU (nlpkit's own default)."""
    if requested != "auto":
        return requested
    return "bf16" if info["type"] == "cuda" and info["bf16"] else "fp32"


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def gpu_peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


# ---- workers --------------------------------------------------------------------------------------
def run_worker(script: Path, spec: dict[str, Any], label: str, verbose: bool = False) -> dict[str, Any]:
    """Run ``script --worker SPEC`` in a fresh interpreter; returns its JSON result (or the error)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        spec = {**spec, "result": str(Path(tmp) / "result.json"), "workdir": tmp}
        spec_path = Path(tmp) / "spec.json"
        start = time.time()  # also the worker's: figures "since launch" (time to a score) count from here
        spec_path.write_text(json.dumps({**spec, "launch_time": start}))
        env = {**os.environ, **OFFLINE_ENV}
        proc = subprocess.run([sys.executable, str(script), "--worker", str(spec_path)], env=env,
                              stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.time() - start
        result_path = Path(spec["result"])
        if proc.returncode != 0 or not result_path.exists():
            tail = (proc.stdout or "")[-3000:]
            raise RuntimeError(f"{label} run failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(result_path.read_text())
    result["process_wall_s"] = wall
    return result


def cached_run(kind: str, code: str, spec: dict[str, Any], repeat: int, run: Callable[[], dict[str, Any]],
               fresh: bool = False) -> tuple[dict[str, Any], bool]:
    """(result, came from the cache): a ResultCache under .cache/KIND/results for a run that has a spec (the
    worker's settings, less its scratch paths) and a repeat number."""
    cache = ResultCache(CACHE / kind / "results", code, fresh)
    settings = {**{k: v for k, v in spec.items() if k not in ("workdir", "result", "launch_time")}, "repeat": repeat}
    found = cache.get(settings)
    if found is not None:
        return found, True
    result = run()
    cache.put(settings, result)
    return result, False


def interval_text(values: Sequence[float], digits: int = 1) -> str:
    """median [low, high] (bootstrap 95%, n)."""
    lo, hi = bootstrap_interval(values)
    return f"{statistics.median(values):.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def worker_main(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """In a worker process: run the handler the spec names and write its result; True if this was one."""
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        return False
    offline()
    spec = json.loads(Path(sys.argv[2]).read_text())
    result = handlers[spec["system"]](spec)
    result["peak_rss_mb"] = peak_rss_mb()
    gpu = gpu_peak_mb()
    if gpu is not None:
        result["peak_gpu_mb"] = gpu
    Path(spec["result"]).write_text(json.dumps(result, indent=2))
    return True


# ---- tables ---------------------------------------------------------------------------------------
def spread(values: Sequence[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 4000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (as ``spacy benchmark speed`` reports): with few repeats
    it is wide, which is the point: a reader sees how far one number can be trusted."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    cut = (1 - level) / 2
    return medians[int(cut * resamples)], medians[min(resamples - 1, int((1 - cut) * resamples))]


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float], level: float = 0.95,
                   resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """(ratio of the medians, low, high): each side resampled on its own, the ratio of the two medians taken
    per resample."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(numerator, k=len(numerator)))
                    / statistics.median(rng.choices(denominator, k=len(denominator))) for _ in range(resamples))
    cut = (1 - level) / 2
    return (statistics.median(numerator) / statistics.median(denominator), ratios[int(cut * resamples)],
            ratios[min(resamples - 1, int((1 - cut) * resamples))])


def code_version(*paths: str) -> str:
    """The committed content of ``paths`` (git tree and blob ids, so a commit that touches only docs keeps the
    key) plus a hash of their uncommitted changes: what a cached benchmark result is keyed by, so a measurement
    can span sessions and a rerun only fills in what is missing."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    ids = git("rev-parse", *[f"HEAD:{p}" for p in paths]).split() or ["no-git"]
    h = hashlib.sha256(git("diff", "HEAD", "--", *paths).encode())
    for name in sorted(git("ls-files", "--others", "--exclude-standard", "--", *paths).split("\n")):
        if name and (ROOT / name).is_file():
            h.update(name.encode() + (ROOT / name).read_bytes())
    return hashlib.sha256(" ".join(ids).encode()).hexdigest()[:12] + "+" + h.hexdigest()[:12]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"
              for r in cells[1:]]
    return "\n".join(lines)


def save_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"raw results written to {path}")


def versions() -> str:
    import torch
    import transformers

    import nlpkit

    return f"nlpkit {nlpkit.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"


# ---- checkpoint export ----------------------------------------------------------------------------
def export_token_classification(checkpoint_dir: str | Path, out_dir: str | Path, task: str | None = None) -> Path:
    """Write an nlpkit token-classification checkpoint as a transformers AutoModelForTokenClassification folder.

    The weights are the checkpoint's own: ``backbone.model.*`` becomes the HF base model (``bert.*``) and
    the task head's ``classifier`` becomes the HF ``classifier``; every HF weight must be matched exactly
    (nothing is left at random initialisation), or this fails. Labels come from the checkpoint's label map.
    """
    import json as _json

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    from nlpkit.engine import checkpoint

    folder = checkpoint.resolve(checkpoint_dir)
    meta = _json.loads((folder / checkpoint.META_FILE).read_text())
    entries = [t for t in meta["tasks"] if task is None or t["name"] == task]
    if len(entries) != 1:
        raise ValueError(f"choose one task of {[t['name'] for t in meta['tasks']]}")
    entry = entries[0]
    labels = entry["state"]["labels"]
    weights = load_file(str(folder / checkpoint.WEIGHTS_FILE))
    config = AutoConfig.from_pretrained(folder / "backbone", num_labels=len(labels),
                                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    config.architectures = None
    model = AutoModelForTokenClassification.from_config(config)
    prefix = model.base_model_prefix
    head = f"heads.{entry['name']}."
    state = {}
    for key in model.state_dict():
        if key.startswith(prefix + "."):
            source = "backbone.model." + key[len(prefix) + 1:]
        else:
            source = head + key
        if source not in weights:
            raise KeyError(f"no weight {source!r} in the checkpoint for HF weight {key!r}")
        state[key] = weights[source]
    model.load_state_dict(state, strict=True)
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(folder / "tokenizer").save_pretrained(out_dir)
    (out_dir / "nlpkit-export.json").write_text(_json.dumps({"from": str(folder), "task": entry["name"]}) + "\n")
    return out_dir


# ---- one step meter for both sides ----------------------------------------------------------------
class StepMeter:
    """Throughput over optimizer steps 2..N, measured the same way on both sides.

    ``count(batch)`` is called for every training micro-batch as it is used, ``step_done()`` right after
    every optimizer step. The window runs from the end of step 1 to the end of step N, so one-off costs
    of the first step (allocation, kernel selection, a compile) are left out on both sides. Besides wall
    time it records the process's CPU time (all threads): on a machine shared with other jobs the CPU
    seconds a fixed piece of work costs move much less than its wall time does.
    """

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.samples = 0
        self.padded = 0  # positions the model computes on, padding included
        self.tokens: Any = 0
        self.marks: list[tuple[float, float, int, Any, int]] = []

    def count(self, batch: dict[str, Any]) -> None:
        self.samples += int(batch["input_ids"].shape[0])
        self.padded += int(batch["input_ids"].numel())
        self.tokens = self.tokens + batch["attention_mask"].sum()  # a tensor: no device sync per step

    def step_done(self) -> None:
        first_or_last = not self.marks or len(self.marks) + 1 == self.total_steps
        if first_or_last:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), time.process_time(), self.samples, self.tokens, self.padded))

    def result(self) -> dict[str, Any]:
        if len(self.marks) < 2:
            return {}
        (w0, c0, s0, t0, p0), (w1, c1, s1, t1, p1) = self.marks[0], self.marks[-1]
        samples, tokens, padded = s1 - s0, int(t1) - int(t0), p1 - p0
        return {"samples_per_s": samples / (w1 - w0), "tokens_per_s": tokens / (w1 - w0),
                "padded_tokens_per_s": padded / (w1 - w0), "padding_fraction": 1 - tokens / max(padded, 1),
                "samples_per_cpu_s": samples / (c1 - c0), "tokens_per_cpu_s": tokens / (c1 - c0),
                "window_steps": len(self.marks) - 1, "window_samples": samples, "window_tokens": tokens,
                "window_wall_s": w1 - w0, "window_cpu_s": c1 - c0}


# ---- results kept across sessions -------------------------------------------------------------------
class ResultCache:
    """One JSON file per measured run under ``folder``, named by a hash of the code version and the run's settings.

    ``get(settings)`` gives what an earlier run with the same code and settings measured (None when there is none,
    or when ``fresh`` asks to measure again); ``put(settings, result)`` keeps a new measurement. So an interrupted
    or extended benchmark only runs what is missing. Settings must be JSON: paths as strings, no objects.
    """

    def __init__(self, folder: Path, version: str, fresh: bool = False):
        self.folder, self.version, self.fresh = Path(folder), version, fresh

    def key(self, settings: dict[str, Any]) -> str:
        blob = json.dumps({"settings": settings, "code": self.version}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def path(self, settings: dict[str, Any]) -> Path:
        return self.folder / f"{self.key(settings)}.json"

    def get(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(settings)
        if self.fresh or not path.is_file():
            return None
        return json.loads(path.read_text())["result"]

    def put(self, settings: dict[str, Any], result: dict[str, Any]) -> None:
        path = self.path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": settings, "code": self.version, "result": result}, indent=2) + "\n")
        os.replace(tmp, path)
