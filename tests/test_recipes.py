"""Every recipe parses into a valid run configuration; recipe mistakes name the key and the file."""
import json
from pathlib import Path

import pytest
import yaml

from conftest import benchmark_dir
from nlpkit.cli import main
from nlpkit.config import RunConfig, load_recipe
from nlpkit.registry import get_task_class

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_is_a_recipe_per_benchmark():
    names = {p.stem for p in RECIPES}
    assert {"conll2003", "sst2", "trec", "semeval2010_task8", "wmt16_en_ro", "cnn_dailymail", "xsum",
            "multitask_ner_re", "squad_v1.1", "squad_v2.0", "race"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_its_task_options_are_valid(path):
    data = load_recipe(path)
    data.pop("data_dir", None)
    config = RunConfig.from_dict(data, str(path))
    for entry in config.tasks:
        get_task_class(entry.type)(entry.name, entry.options)  # validates the options
        for split, file in entry.data.items():
            assert split in {"train", "dev", "test"}
            assert file.startswith("hub:") or not Path(file).is_absolute()


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
    assert "tasks.ner.data.train expects 'train.txt.gz'" in err and "--data-dir" in err


def test_recipe_smoke_run_with_overrides_and_report(tmp_path, capsys):
    """The TREC recipe reads the benchmark as it is; --set overrides any field; evaluate writes a report."""
    trec = str(benchmark_dir("trec"))  # --data-dir: the recipe's own data_dir is ../shared beside the clone
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
