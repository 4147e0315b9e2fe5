"""Every recipe parses into a valid run configuration; recipe mistakes name the key and the file; recipes read
their hub source by default and --data-dir a local copy (released files or the hub layout), offline."""
import gzip
import json
from pathlib import Path

import pytest
import yaml

from conftest import benchmark_dir
from nlpkit.apps.cli import RecipeData, _parser, build_config, main
from nlpkit.engine.config import RunConfig, load_recipe
from nlpkit.sdk.data import parse_hub_spec
from nlpkit.sdk.errors import ConfigError, DataError
from nlpkit.sdk.registry import get_task_class

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_is_a_recipe_per_benchmark():
    names = {p.stem for p in RECIPES}
    assert {"conll2003", "sst2", "trec", "semeval2010_task8", "wmt16_en_ro", "cnn_dailymail", "xsum",
            "multitask_ner_re", "squad_v1.1", "squad_v2.0", "race"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_its_task_options_are_valid(path):
    data = load_recipe(path)
    assert "data_dir" not in data  # shipped recipes name their source: the hub, or --data-dir
    recipe = RecipeData(data, str(path), None)  # takes each task's `released` out of the run config
    config = RunConfig.from_dict(data, str(path))
    for entry in config.tasks:
        get_task_class(entry.type)(entry.name, entry.options)  # validates the options
        for split, file in entry.data.items():
            assert split in {"train", "dev", "test"}
            assert file.startswith("hub:")
            parse_hub_spec(file)
        released = recipe.released.get(entry.name)
        if path.stem not in ("cnn_dailymail", "xsum", "wmt16_en_ro"):  # these name only their hub source
            assert released and set(released) <= set(entry.data), path


def test_unknown_recipe_key_names_key_and_file(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"tasks": [{"type": "ner"}], "trainer": {"epoch": 3}}))
    assert main(["train", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert str(recipe) in err and "unknown key trainer.epoch" in err and "did you mean 'epochs'" in err


def test_wrong_type_in_recipe_names_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"tasks": [{"type": "ner"}], "trainer": {"batch_size": "many"}}))
    assert main(["train", "--recipe", str(recipe)]) == 2
    assert "trainer.batch_size: expected an integer" in capsys.readouterr().err


def test_missing_data_file_names_the_recipe_field_and_the_offline_way(tmp_path, capsys):
    assert main(["train", "--recipe", str(ROOT / "recipes" / "conll2003.yaml"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tasks.ner.data.train expects 'train.txt'" in err and "local copy of the hub dataset" in err
    assert "leave out --data-dir" in err and err.count("\n") == 1


def test_recipe_smoke_run_with_overrides_and_report(tmp_path, capsys):
    """The TREC recipe reads the benchmark as it is; --set overrides any field; evaluate writes a report."""
    trec = str(benchmark_dir("trec"))  # --data-dir: the released files (the recipe's default is the hub)
    out = tmp_path / "run"
    assert main(["train", "--recipe", str(ROOT / "recipes" / "trec.yaml"), "--data-dir", trec,
                 "--set", "backbone.spec=mini", "--set", "backbone.vocab_size=500", "--max-steps", "3",
                 "--set", "trainer.lr=3e-3", "--output-dir", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["trainer"]["lr"] == 3e-3 and config["backbone"]["spec"] == "mini"
    assert config["tasks"][0]["options"]["label_part"] == "coarse"
    capsys.readouterr()
    # the test file is held out here: the recipe's dev split is carved from train, as training did
    code = main(["evaluate", str(out), "--recipe", str(ROOT / "recipes" / "trec.yaml"), "--data-dir", trec,
                 "--split", "dev"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["spec"] == "mini"
    trained = json.loads((out / "metrics.json").read_text())["tasks"]["trec"]
    assert report["results"]["trec/dev"]["metrics"]["accuracy"] == pytest.approx(trained["accuracy"])
    assert "seqeval" in report["scorers"]
    assert (out / "report.md").read_text().startswith("# nlpkit benchmark report")


# ---- the hub source, offline: a local folder laid out like the hub dataset --------------------------------
CONLL = ROOT / "recipes" / "conll2003.yaml"
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SENTENCES = [
    (["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
    (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    (["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
    (["The", "European", "Commission", "said", "so"], ["O", "B-ORG", "I-ORG", "O", "O"]),
    (["Germany", "imports", "British", "lamb"], ["B-LOC", "O", "B-MISC", "O"]),
    (["Werner", "Zwingmann", "said", "Bonn", "agreed"], ["B-PER", "I-PER", "O", "B-LOC", "O"]),
]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """load_dataset on a local folder writes Arrow files to the datasets cache: a folder of this test's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def hub_layout(folder: Path) -> Path:
    """CoNLL-2003 as lhoestq/conll2003 lays it out: Parquet per split folder, ner_tags a ClassLabel sequence."""
    import datasets

    features = datasets.Features({"id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=TAGS))})
    for split, n in (("train", 12), ("validation", 6), ("test", 6)):
        rows = [{"id": str(i), "tokens": SENTENCES[i % 6][0], "ner_tags": [TAGS.index(t) for t in SENTENCES[i % 6][1]]}
                for i in range(n)]
        (folder / split).mkdir(parents=True)
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(folder / split / "0000.parquet"))
    return folder


def released_layout(folder: Path, names=("train.txt.gz", "valid.txt")) -> Path:
    """The released CoNLL-2003 files (WORD POS CHUNK NER), one gzipped, one not."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "-DOCSTART- -X- -X- O\n\n" + "\n".join(
        "\n".join(f"{w} NNP B-NP {t}" for w, t in zip(*s)) + "\n" for s in SENTENCES)
    for name in names:
        (folder / name).write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    return folder


def train_config(*argv: str):
    args = _parser().parse_args(["train", *argv])
    return build_config(args)


def one_line_error(capsys, alone: bool = True) -> str:
    """The error line; ``alone``: nothing else was printed (evaluate logs loading the checkpoint first)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("nlpkit: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1] and (len(lines) == 1 or not alone), err
    return errors[0]


def test_offline_without_a_local_copy_is_one_line_naming_both_ways(tmp_path, capsys):
    """HF_HUB_OFFLINE is set for the whole suite (conftest): the recipe's hub source cannot be loaded."""
    assert main(["train", "--recipe", str(CONLL), "--output-dir", str(tmp_path / "run")]) == 2
    line = one_line_error(capsys)
    assert "could not load hub dataset lhoestq/conll2003" in line and "offline?" in line
    assert "go online" in line and "datasets downloads it once and caches it" in line
    assert "--data-dir DIR holding the released files (train.txt, valid.txt, test.txt; gzipped or not)" in line
    assert "local copy of the hub dataset" in line
    assert not (tmp_path / "run").exists()  # refused before anything was built or written


def test_recipe_trains_and_evaluates_on_a_local_hub_layout_folder(tmp_path, hf_cache, capsys):
    hub = hub_layout(tmp_path / "conll-hub")
    out = tmp_path / "run"
    assert main(["train", "--recipe", str(CONLL), "--data-dir", str(hub), "--backbone", "mini",
                 "--set", "backbone.vocab_size=500", "--set", "trainer.max_steps=2", "--set", "trainer.lr=3e-3",
                 "--output-dir", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["tasks"][0]["data"] == {"train": f"hub:{hub}:train", "dev": f"hub:{hub}:validation",
                                          "test": f"hub:{hub}:test"}
    assert "released" not in config["tasks"][0]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--recipe", str(CONLL), "--data-dir", str(hub)]) == 0
    err = capsys.readouterr().err
    assert f"ner: scoring the test split: local copy {hub} of hub dataset lhoestq/conll2003, split test" in err
    report = json.loads((out / "report.json").read_text())
    result = report["results"]["ner/test"]
    assert result["split"] == "test" and result["data"] == f"hub:{hub}:test" and "f1" in result["metrics"]
    assert "split: **test** (local copy" in (out / "report.md").read_text()

    # the same run scored on the released files: a split the folder lacks is one line naming both ways
    released = released_layout(tmp_path / "released")
    assert main(["evaluate", str(out), "--recipe", str(CONLL), "--data-dir", str(released), "--no-report"]) == 2
    line = one_line_error(capsys, alone=False)
    assert "tasks.ner.data.test expects 'test.txt'" in line and "leave out --data-dir" in line
    assert main(["evaluate", str(out), "--recipe", str(CONLL), "--data-dir", str(released), "--split", "dev",
                 "--json", "--no-report"]) == 0
    captured = capsys.readouterr()
    assert f"ner: scoring the dev split: released file {released / 'valid.txt'}" in captured.err
    assert json.loads(captured.out)["ner/dev"]["f1"] >= 0

    # without --data-dir the evaluation needs the hub: offline, one line
    assert main(["evaluate", str(out), "--recipe", str(CONLL)]) == 2
    assert "could not load hub dataset lhoestq/conll2003" in one_line_error(capsys, alone=False)


def test_data_dir_with_the_released_files(tmp_path):
    """Released names are found gzipped or not; the hub source is not touched."""
    released = released_layout(tmp_path / "conll2003")
    config = train_config("--recipe", str(CONLL), "--data-dir", str(released))
    assert config.tasks[0].data == {"train": str(released / "train.txt.gz"), "dev": str(released / "valid.txt")}
    # the multi-task recipe: DIR/conll2003/... and DIR/semeval2010_task8/... as released
    (tmp_path / "semeval2010_task8").mkdir()
    (tmp_path / "semeval2010_task8" / "TRAIN_FILE.TXT").write_text(
        '1\t"The <e1>pen</e1> is in the <e2>box</e2>."\nContent-Container(e1,e2)\nComment:\n\n')
    config = train_config("--recipe", str(ROOT / "recipes" / "multitask_ner_re.yaml"), "--data-dir", str(tmp_path))
    assert [t.data for t in config.tasks] == [
        {"train": str(released / "train.txt.gz"), "dev": str(released / "valid.txt")},
        {"train": str(tmp_path / "semeval2010_task8" / "TRAIN_FILE.TXT")}]
    # --data replaces one split; the other still comes from DIR
    config = train_config("--recipe", str(CONLL), "--data-dir", str(released), "--data", f"dev={released / 'train.txt.gz'}")
    assert config.tasks[0].data["dev"] == str(released / "train.txt.gz")


def test_a_release_without_its_dev_file_can_carve_one(tmp_path):
    """SST-2 as some copies hold it, train.tsv only: the recipe's dev is GLUE's dev.tsv; --option dev_split carves."""
    sst2 = ROOT / "recipes" / "sst2.yaml"
    (tmp_path / "train.tsv.gz").write_bytes(gzip.compress(b"label\tsentence\n0\tbad\n1\tgood\n"))
    with pytest.raises(ConfigError, match=r"tasks.sentiment.data.dev expects 'dev.tsv'"):
        train_config("--recipe", str(sst2), "--data-dir", str(tmp_path))
    config = train_config("--recipe", str(sst2), "--data-dir", str(tmp_path), "--option", "dev_split=0.05")
    assert config.tasks[0].data == {"train": str(tmp_path / "train.tsv.gz")}
    assert config.tasks[0].options["dev_split"] == 0.05


def test_old_recipes_with_data_dir_and_local_files_still_work(tmp_path):
    released_layout(tmp_path / "data", names=("train.txt", "valid.txt"))
    recipe = tmp_path / "old.yaml"
    recipe.write_text("data_dir: data\ntasks:\n  - type: ner\n    data: {train: train.txt, dev: valid.txt}\n")
    config = train_config("--recipe", str(recipe))
    assert config.tasks[0].data == {"train": str(tmp_path / "data" / "train.txt"), "dev": str(tmp_path / "data" / "valid.txt")}


def test_hub_spec_with_a_revision(tmp_path, monkeypatch, hf_cache):
    import datasets

    from nlpkit.sdk.data import HubLoadError, load_hub_split

    hub = parse_hub_spec("hub:CogComp/trec@refs/convert/parquet:test")
    assert (hub.dataset, hub.revision, hub.config, hub.split) == ("CogComp/trec", "refs/convert/parquet", None, "test")
    hub = parse_hub_spec("hub:nyu-mll/glue@0123abcd:sst2:validation")
    assert (hub.dataset, hub.revision, hub.config, hub.split) == ("nyu-mll/glue", "0123abcd", "sst2", "validation")
    assert hub.text() == "hub:nyu-mll/glue@0123abcd:sst2:validation"
    for bad in ("hub:@main:train", "hub:x@:train", "hub:only-a-name"):
        with pytest.raises(DataError, match="expected hub:DATASET:SPLIT"):
            parse_hub_spec(bad)
    with pytest.raises(HubLoadError, match=r"could not load hub dataset 'CogComp/trec' \(revision refs/convert/parquet, "
                                           r"split test\)") as info:
        load_hub_split("hub:CogComp/trec@refs/convert/parquet:test")
    assert info.value.offline
    seen = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: seen.update(args=a, kwargs=k) or "rows")
    assert load_hub_split("hub:CogComp/trec@refs/convert/parquet:test") == "rows"
    assert seen == {"args": ("CogComp/trec", None), "kwargs": {"split": "test", "revision": "refs/convert/parquet"}}


def test_local_copy_as_a_saved_dataset_dict_and_with_config_folders(tmp_path, hf_cache):
    import datasets

    from nlpkit.sdk.data import load_hub_split

    rows = datasets.Dataset.from_list([{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}])
    datasets.DatasetDict({"train": rows, "validation": rows}).save_to_disk(str(tmp_path / "saved"))
    assert list(load_hub_split(f"hub:{tmp_path / 'saved'}:sst2:validation")["sentence"]) == ["good", "bad"]
    with pytest.raises(DataError, match="no split 'test' in this saved DatasetDict"):
        load_hub_split(f"hub:{tmp_path / 'saved'}:test")
    (tmp_path / "glue" / "sst2" / "train").mkdir(parents=True)  # a copy with one folder per config
    rows.to_parquet(str(tmp_path / "glue" / "sst2" / "train" / "0000.parquet"))
    assert len(load_hub_split(f"hub:{tmp_path / 'glue'}:sst2:train")) == 2


def test_task_readers_take_the_chosen_hub_datasets_columns():
    """TREC's hub columns (text, coarse_label, fine_label) with the recipe's label-first options; Multi30k's en/de."""
    import datasets

    from nlpkit.engine.config import load_recipe as load

    trec = load(ROOT / "recipes" / "trec.yaml")["tasks"][0]
    task = get_task_class("classification")("trec", trec["options"])
    features = datasets.Features({"text": datasets.Value("string"),
                                  "coarse_label": datasets.ClassLabel(names=["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]),
                                  "fine_label": datasets.ClassLabel(names=["ABBR:abb", "ABBR:exp", "DESC:manner"])})
    rows = datasets.Dataset.from_list([{"text": "How did serfdom develop ?", "coarse_label": 2, "fine_label": 2}],
                                      features=features)
    assert [ex["label"] for ex in task.read_hub(rows, "hub:x:train")] == ["DESC"]
    fine = get_task_class("classification")("trec", {**trec["options"], "label_part": "full"})
    assert [ex["label"] for ex in fine.read_hub(rows, "hub:x:train")] == ["DESC:manner"]
    pairs = datasets.Dataset.from_list([{"en": "A dog runs.", "de": "Ein Hund rennt."}])
    translation = get_task_class("translation")("translation", {"source_lang": "en", "target_lang": "de"})
    assert [(e["source"], e["target"]) for e in translation.read_hub(pairs, "hub:x:train")] == [("A dog runs.", "Ein Hund rennt.")]
