"""The data engine (nlpkit.engine.tables): examples and features in memory-mapped Arrow tables, cached by what made them.

Cache hits and misses (a changed file, tokenizer or option re-encodes), batch-wise encoding equal to one call,
Parquet / Arrow / datasets-folder sources for each task family, exact resume on cached features, and the
errors a bad table file gives.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nlpkit import DataError

from nlpkit.engine import checkpoint
from nlpkit.apps.cli import main
from nlpkit.engine.config import DataSettings, TaskEntry
from nlpkit.sdk.data import LengthGroupedBatches
from nlpkit.sdk.registry import get_task_class
from nlpkit.engine.tables import ArrowRows, FeatureRows, encode_split, load_examples
from nlpkit.engine.task_data import data_fingerprint, read_splits

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "data"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    """A small WordPiece tokenizer built from the bundled NER words (no download)."""
    from transformers import BertTokenizerFast

    words = sorted({line.split()[0].lower() for line in (DATA / "ner" / "train.conll").read_text().splitlines()
                    if line.strip() and not line.startswith("-DOCSTART-")})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words[:3000])}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


def prepared(type_name: str, tokenizer, **options):
    task = get_task_class(type_name)(options=options)
    task.tokenizer, task.backbone_kind = tokenizer, "encoder"
    return task


def csv_file(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    return str(path)


ROWS = [("a good film", "pos"), ("a dull film", "neg"), ("great fun", "pos"), ("tedious and long", "neg")] * 5


# ---- the table ------------------------------------------------------------------------------------
def test_a_table_reads_back_every_example_exactly_and_fingerprints_like_a_list(tmp_path, tokenizer):
    task = prepared("classification", tokenizer)
    path = csv_file(tmp_path / "a.csv", ROWS)
    table = load_examples(task, path, DataSettings(cache_dir=str(tmp_path / "cache")))
    listed = list(task.read(path))
    assert isinstance(table, ArrowRows) and len(table) == len(listed) == 20
    assert list(table) == listed and table[3] == listed[3] and table[-1] == listed[-1]
    assert table.take([5, 0, 5]) == [listed[5], listed[0], listed[5]]
    # the fingerprint a checkpoint stores: the same for the table and for the plain list
    assert table.fingerprint() == data_fingerprint(listed)
    part = table.subset([1, 4, 7])
    assert list(part) == [listed[1], listed[4], listed[7]] and part.fingerprint() == data_fingerprint(part)
    assert part.fingerprint() == data_fingerprint([listed[1], listed[4], listed[7]])
    assert list(table[2:5]) == listed[2:5] and list(part[1:]) == [listed[4], listed[7]]
    with pytest.raises(IndexError):
        table[20]


def test_every_example_reads_back_as_it_was_written_whichever_writer_stored_it(tmp_path):
    """example_json writes with orjson except where orjson would change the example (NaN and infinities it
    writes as null) or refuses it (lone surrogates, integers beyond 64 bits): those go to the json module."""
    import math

    from nlpkit.engine.tables import _loads, example_json

    examples = [{"tokens": ["Müller", "東京", "🙂", 'say "hi"\n'], "tags": ["B-PER", "O", "O", "O"], "line": 1},
                {"text": "x", "score": float("nan"), "other": float("inf")},
                {"text": "lone \udc80 surrogate", "line": 2},
                {"big": 2 ** 70, "small": -(2 ** 70)},
                {"label": None, "text": "null and void"},
                {"b": 1, "a": [1.5, 1e-05, True, False], "nested": {"z": 1, "y": [{"k": "v"}]}}]
    for ex in examples:
        text = example_json(ex)
        back = _loads(text)
        assert json.dumps(back, sort_keys=True, default=str) == json.dumps(ex, sort_keys=True, default=str)
        assert example_json(back) == text  # a stored example hashes the same when written again
    assert math.isnan(_loads(example_json(examples[1]))["score"])
    assert example_json(examples[5]).startswith('{"a":[1.5,')  # sorted keys, orjson's compact text
    stored = [ex for ex in examples if "surrogate" not in ex.get("text", "")]  # Arrow strings are UTF-8: no lone
    table = ArrowRows.open([str(_store(stored, tmp_path))], "k")                # surrogates (strict readers make none)
    assert [json.dumps(e, sort_keys=True, default=str) for e in table] == \
        [json.dumps(e, sort_keys=True, default=str) for e in stored]
    assert table.fingerprint() == data_fingerprint(stored)


def _store(examples, folder):
    from nlpkit.engine.tables import _store_examples

    class Task:
        name = "odd"

    return Path(_store_examples(Task(), examples, "odd", folder, "k").files[0])


def test_carving_and_sampling_select_the_same_rows_as_from_a_list(tmp_path, tokenizer):
    path = csv_file(tmp_path / "a.csv", [(f"text {i}", "pos" if i % 3 else "neg") for i in range(200)])
    task = get_task_class("classification")(options={"dev_split": 0.1, "max_train_examples": 50})
    data = read_splits(task, TaskEntry(type="classification", data={"train": path}),
                       settings=DataSettings(cache_dir=str(tmp_path / "cache")))
    from nlpkit.sdk.data import carve_dev_split, sample_examples

    train, dev = carve_dev_split(list(task.read(path)), 0.1, 0, path)
    assert list(data["dev"]) == dev and len(dev) == 20
    assert list(data["train"]) == sample_examples(train, 50, 0)


# ---- the cache ------------------------------------------------------------------------------------
def encode(task, path, cache):
    settings = DataSettings(cache_dir=str(cache))
    return encode_split(task, load_examples(task, path, settings), "train", settings)


def test_the_second_encode_is_a_cache_hit_and_every_change_that_matters_misses(tmp_path, tokenizer):
    from transformers import BertTokenizerFast

    cache = tmp_path / "cache"
    path = csv_file(tmp_path / "a.csv", ROWS)
    task = prepared("classification", tokenizer)
    task.fit(list(task.read(path)))
    first, said = encode(task, path, cache)
    assert said.startswith("encoded 20 examples into 20 features") and isinstance(first, FeatureRows)
    again, said = encode(task, path, cache)
    assert said.startswith("features: cached (") and list(again) == list(first)
    assert list(first) == task.encode(list(task.read(path)))  # what one call over the whole list gives

    # an option that changes the features
    short = prepared("classification", tokenizer, max_length=8)
    short.fit(list(short.read(path)))
    assert encode(short, path, cache)[1].startswith("encoded")
    # another tokenizer (one more word in the vocabulary)
    vocab = dict(tokenizer.get_vocab())
    vocab["zzzz"] = len(vocab)
    other = prepared("classification", BertTokenizerFast(vocab=vocab, do_lower_case=True))
    other.fit(list(other.read(path)))
    assert encode(other, path, cache)[1].startswith("encoded")
    # the same path, edited: same size and the same modification time, other bytes
    stat = Path(path).stat()
    Path(path).write_text(Path(path).read_text().replace("a good film,pos", "a good film,neg", 1))
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    edited, said = encode(task, path, cache)
    assert said.startswith("encoded") and edited[0] != first[0]
    # a changed label space (learned state) changes the label ids, so the features
    relabelled = prepared("classification", tokenizer)
    relabelled.fit(list(relabelled.read(path)))
    relabelled.labels = list(reversed(relabelled.labels))
    assert encode(relabelled, path, cache)[1].startswith("encoded")


def test_no_cache_keeps_nothing_and_a_damaged_entry_is_rebuilt(tmp_path, tokenizer, capsys):
    path = csv_file(tmp_path / "a.csv", ROWS)
    cache = tmp_path / "cache"
    task = prepared("classification", tokenizer)
    settings = DataSettings(cache=False, cache_dir=str(cache))
    examples = load_examples(task, path, settings)
    task.fit(examples)
    features, said = encode_split(task, examples, "train", settings)
    assert said.startswith("encoded") and not cache.exists()
    assert len(features) == 20
    # a damaged table file in the cache is read again, not trusted
    examples = load_examples(task, path, DataSettings(cache_dir=str(cache)))
    arrow = Path(examples.files[0])
    arrow.write_bytes(b"not arrow")
    again = load_examples(task, path, DataSettings(cache_dir=str(cache)))
    assert list(again) == list(task.read(path))


def test_encoding_in_batches_equals_one_call_for_every_built_in_task(tmp_path, tokenizer, monkeypatch):
    """The engine hands encode batches of ENCODE_BATCH examples; a task whose features depended on the batch
    would train on other features than before. Checked with tiny batches on each task's embedded data."""
    import nlpkit.engine.tables as tables

    monkeypatch.setattr(tables, "ENCODE_BATCH", 7)
    # (translation and summarization encode through their backbone's generator: the end-to-end runs train them
    # on cached tables)
    for type_name in ("classification", "sentiment", "ner", "qa", "reading-comprehension"):
        task = get_task_class(type_name)()
        files = task.default_data()
        examples = load_examples(task, files["dev"], DataSettings(cache_dir=str(tmp_path / "cache")))
        task.fit(list(load_examples(task, files["train"], DataSettings(cache_dir=str(tmp_path / "cache")))))
        task.tokenizer, task.backbone_kind = tokenizer, "encoder"
        try:
            whole = task.encode(list(examples)[:40])
        except Exception as exc:  # a task that needs more of a backbone than a tokenizer to encode
            pytest.fail(f"{type_name}: encode on a bare tokenizer failed: {exc}")
        batched, _ = encode_split(task, examples.subset(range(40)), "dev", DataSettings(cache_dir=str(tmp_path / "c2")))
        assert list(batched) == json.loads(json.dumps(whole)), type_name
        assert list(batched.lengths()) == [task.feature_length(f) for f in whole], type_name


# ---- table sources --------------------------------------------------------------------------------
def test_parquet_arrow_and_datasets_folders_read_through_each_task_family(tmp_path):
    import datasets

    cases = {
        "classification": ([{"text": "a good film", "label": "pos"}, {"text": "dull", "label": "neg"}],
                           [{"text": "a good film", "label": "pos", "line": 1}, {"text": "dull", "label": "neg", "line": 2}]),
        "ner": ([{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}],
                [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"], "line": 1}]),
        "translation": ([{"translation": {"en": "Hello .", "de": "Hallo ."}}],
                        None),
        "summarization": ([{"document": "A long text about a cat .", "summary": "A cat ."}], None),
        "qa": ([{"id": "q1", "title": "t", "context": "Paris is in France .", "question": "Where is Paris ?",
                 "answers": {"text": ["France"], "answer_start": [12]}}], None),
    }
    for type_name, (rows, expected) in cases.items():
        table = datasets.Dataset.from_list(rows)
        parquet = tmp_path / f"{type_name}.parquet"
        table.to_parquet(str(parquet))
        folder = tmp_path / f"{type_name}-saved"
        table.save_to_disk(str(folder))
        arrow = next(folder.glob("*.arrow"))
        task = get_task_class(type_name)()
        for source in (parquet, folder, arrow):
            want = json.loads(json.dumps(list(task.read_hub(table, str(source)))))
            got = list(load_examples(task, str(source), DataSettings(cache_dir=str(tmp_path / "cache"))))
            assert got == want and len(got) == len(rows), (type_name, source)
            if expected is not None:
                assert got == expected


def test_a_bad_parquet_file_is_one_clear_error_naming_it(tmp_path):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    task = get_task_class("classification")()
    with pytest.raises(DataError, match=r"train\.parquet.*cannot read this Parquet file"):
        load_examples(task, str(bad), DataSettings(cache_dir=str(tmp_path / "cache")))
    # the CLI says it in one line, exit 2, and nothing is left in the cache
    code = main(["train", "--task", "classification", "--data", f"train={bad}", "--output-dir",
                 str(tmp_path / "run"), "--no-progress", "--cache-dir", str(tmp_path / "c2")])
    assert code == 2 and not any((tmp_path / "c2").rglob("*.arrow"))


def test_a_bad_row_in_a_parquet_file_names_its_row(tmp_path):
    import datasets

    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list([{"text": "fine", "label": "a"}, {"text": "", "label": "b"}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"train\.parquet:2: empty text in column 'text'"):
        load_examples(get_task_class("classification")(), str(path), DataSettings(cache_dir=str(tmp_path / "c")))


# ---- training on cached tables --------------------------------------------------------------------
def test_resume_on_cached_features_ends_identical_to_the_uninterrupted_run(tmp_path, capsys):
    def run(out: Path, *extra: str) -> str:
        args = ["train", "--task", "classification", "--backbone", "mini", "--max-steps", "8", "--batch-size", "16",
                "--output-dir", str(out), "--no-progress", "--precision", "fp32", "--cache-dir", str(tmp_path / "cache"),
                "--set", "checkpoint.save_every=4", "--set", "checkpoint.keep_last=3", "--set", "trainer.eval_every=4",
                *extra]
        assert main(args) == 0
        return capsys.readouterr().out

    said = run(tmp_path / "a")
    assert "classification train: encoded" in said
    said = run(tmp_path / "b")
    assert "classification train: features: cached" in said
    # b loses its last checkpoint and resumes from step 4 on the cached tables
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-8")
    (tmp_path / "b" / "metrics.json").unlink()
    said = run(tmp_path / "b")
    assert "resuming from" in said and "features: cached" in said
    from safetensors.torch import load_file

    def weights(run_dir: Path) -> dict:
        folder = checkpoint.latest_training(run_dir)
        return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}

    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b"))
    assert {k: ma[k] for k in ("best_step", "selection_score")} == {k: mb[k] for k in ("best_step", "selection_score")}


def test_length_grouped_batches_cover_every_index_once_per_epoch_and_repeat_by_seed():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    sampler = LengthGroupedBatches(lengths, 32, seed=3)
    for epoch in (0, 1):
        batches = sampler.batches(epoch)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(1000))
        assert sampler.batches(epoch) == batches
    assert sampler.batches(0) != sampler.batches(1)
    # grouping: within a batch the lengths are close (sorted inside a megabatch of 1,600)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in sampler.batches(0)) / len(batches)
    assert spread < 10


def test_a_fitted_table_gives_its_label_state_back_without_a_pass(tmp_path, tokenizer):
    from nlpkit.engine.tables import fit_task

    path = csv_file(tmp_path / "a.csv", ROWS + [("so so", "mixed")])
    settings = DataSettings(cache_dir=str(tmp_path / "cache"))
    first = get_task_class("classification")()
    assert fit_task(first, load_examples(first, path, settings), settings) is False
    second = get_task_class("classification")()
    assert fit_task(second, load_examples(second, path, settings), settings) is True
    assert second.state_dict() == first.state_dict() and second.labels == ["mixed", "neg", "pos"]
    # other options: fitted again (sentiment-like label maps may depend on them)
    third = get_task_class("classification")(options={"max_length": 16})
    assert fit_task(third, load_examples(third, path, settings), settings) is False
    # no cache: always a real fit
    assert fit_task(get_task_class("classification")(), load_examples(first, path, settings),
                    DataSettings(cache=False)) is False


def test_a_feature_that_is_not_json_is_a_plugin_error_naming_the_task(tmp_path, tokenizer):
    from nlpkit.sdk.errors import PluginError

    path = csv_file(tmp_path / "a.csv", ROWS)
    task = prepared("classification", tokenizer)
    settings = DataSettings(cache_dir=str(tmp_path / "cache"))
    examples = load_examples(task, path, settings)
    task.fit(examples)
    plain = task.encode

    def with_a_tensor(batch):
        return [dict(f, input_ids=torch.tensor(f["input_ids"])) for f in plain(batch)]

    task.encode = with_a_tensor
    with pytest.raises(PluginError, match=r"task 'classification': encode gave a feature that is not JSON-serialis"):
        encode_split(task, examples, "train", settings)


def test_a_carved_split_is_hashed_once(tmp_path, monkeypatch):
    path = csv_file(tmp_path / "a.csv", [(f"text {i}", "pos" if i % 2 else "neg") for i in range(100)])
    settings = DataSettings(cache_dir=str(tmp_path / "cache"))
    task = get_task_class("classification")(options={"dev_split": 0.2})
    train = read_splits(task, TaskEntry(type="classification", data={"train": path}), settings=settings)["train"]
    want = data_fingerprint(list(train))
    assert train.fingerprint() == want
    again = read_splits(task, TaskEntry(type="classification", data={"train": path}), settings=settings)["train"]
    monkeypatch.setattr(ArrowRows, "texts", lambda self, block=0: pytest.fail("hashed the rows again"))
    assert again.fingerprint() == want
