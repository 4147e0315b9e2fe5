"""The translation plugin: readers and their errors, sacreBLEU scoring, and a tiny from-scratch model
that learns the embedded en->de phrase-book to BLEU > 90 on held-out sentences."""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

import nlpkit
from nlpkit import DataError
from nlpkit.apps.cli import main as cli

from conftest import benchmark_dir, tiny_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def task(**options):
    return nlpkit.get_task_class("translation")(options=options)


def write(path: Path, lines: list[str], gz: bool = False) -> str:
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


# ---- readers ---------------------------------------------------------------------------------------
def test_parallel_files_named_three_ways(tmp_path):
    write(tmp_path / "c.en", ["Hello.", "Good night."])
    write(tmp_path / "c.de.gz", ["Hallo.", "Gute Nacht."], gz=True)
    expected = [("Hello.", "Hallo."), ("Good night.", "Gute Nacht.")]
    for spec in (str(tmp_path / "c"), str(tmp_path / "c.en"), f"{tmp_path / 'c.en'},{tmp_path / 'c.de.gz'}"):
        got = list(task().read(spec))
        assert [(e["source"], e["target"]) for e in got] == expected, spec
        assert [e["line"] for e in got] == [1, 2]


def test_language_pair_option_picks_files_and_keys(tmp_path):
    write(tmp_path / "c.fr", ["Bonjour."])
    write(tmp_path / "c.en", ["Hello."])
    got = list(task(source_lang="fr", target_lang="en").read(str(tmp_path / "c")))
    assert (got[0]["source"], got[0]["target"]) == ("Bonjour.", "Hello.")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"translation": {"en": "Hi.", "fr": "Salut."}}) + "\n")
    got = list(task(source_lang="fr", target_lang="en").read(str(path)))
    assert (got[0]["source"], got[0]["target"]) == ("Salut.", "Hi.")


def test_tsv_with_and_without_header(tmp_path):
    plain = write(tmp_path / "a.tsv", ["Hello.\tHallo.", "", "Yes.\tJa.\textra column"])
    got = list(task().read(plain))
    assert [(e["source"], e["target"], e["line"]) for e in got] == [("Hello.", "Hallo.", 1), ("Yes.", "Ja.", 3)]
    headed = write(tmp_path / "b.tsv", ["id\tde\ten", "1\tHallo.\tHello."])
    got = list(task().read(headed))
    assert (got[0]["source"], got[0]["target"], got[0]["line"]) == ("Hello.", "Hallo.", 2)


def test_jsonl_hub_layout_and_source_target(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"translation": {"en": "Hello.", "de": "Hallo."}}) + "\n\n"
                    + json.dumps({"source": "Yes.", "target": "Ja."}) + "\n")
    got = list(task().read(str(path)))
    assert [(e["source"], e["target"], e["line"]) for e in got] == [("Hello.", "Hallo.", 1), ("Yes.", "Ja.", 3)]


def test_hub_reader_on_a_local_dataset_folder_and_offline_error(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "validation.jsonl").write_text(json.dumps({"translation": {"en": "Hello.", "de": "Hallo."}}) + "\n")
    from nlpkit.sdk.data import load_hub_split

    spec = f"hub:{folder}:validation"
    got = list(task().read_hub(load_hub_split(spec), spec))
    assert [(e["source"], e["target"], e["line"]) for e in got] == [("Hello.", "Hallo.", 1)]
    with pytest.raises(DataError, match=r"could not load hub dataset 'wmt16'"):
        load_hub_split("hub:wmt16:de-en:validation")


def test_multi30k_reads_as_it_is():
    multi30k = benchmark_dir("multi30k")
    t = task()
    train = list(t.read(str(multi30k / "train.en.gz")))
    dev = list(t.read(str(multi30k / "val")))
    assert len(train) == 29000 and len(dev) == 1014
    assert train[0]["source"].startswith("Two young, White males") and train[0]["target"].startswith("Zwei junge")


# ---- bad input -------------------------------------------------------------------------------------
def test_misaligned_files_name_both_files_and_counts(tmp_path):
    src = write(tmp_path / "m.en", ["a", "b", "c"])
    tgt = write(tmp_path / "m.de", ["x", "y"])
    with pytest.raises(DataError) as err:
        list(task().read(src))
    msg = str(err.value)
    assert src in msg and tgt in msg and "3 lines" in msg and "2 lines" in msg


@pytest.mark.parametrize("side", ["source", "target"])
def test_empty_line_is_an_error_at_its_line_unless_skipped(tmp_path, side, caplog):
    en = ["One.", "Two.", "Three."]
    de = ["Eins.", "Zwei.", "Drei."]
    (en if side == "source" else de)[1] = "   "
    src, tgt = write(tmp_path / "e.en", en), write(tmp_path / "e.de", de)
    with pytest.raises(DataError) as err:
        list(task().read(src))
    assert err.value.path == (src if side == "source" else tgt) and err.value.line == 2
    assert f"empty {side}" in str(err.value)
    with caplog.at_level(logging.WARNING):
        got = list(task(skip_empty=True).read(src))
    assert [e["line"] for e in got] == [1, 3]
    assert "skipped 1 pair" in caplog.text


def test_malformed_records(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"translation": {"en": "Hi.", "fr": "Salut."}}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: expected keys 'en' and 'de'"):
        list(task().read(str(bad)))
    bad.write_text(json.dumps({"en": "Hi."}) + "\n" + "{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: expected .*found keys \['en'\]"):
        list(task().read(str(bad)))
    tsv = write(tmp_path / "bad.tsv", ["Hello.\tHallo.", "only one column"])
    with pytest.raises(DataError, match=r"bad.tsv:2: expected at least 2 tab-separated columns"):
        list(task().read(tsv))
    lonely = write(tmp_path / "corpus.txt", ["Hello."])
    with pytest.raises(DataError, match="cannot tell where the de side"):
        list(task().read(lonely))
    with pytest.raises(DataError, match="file not found"):
        list(task().read(str(tmp_path / "nothing")))


def test_cli_reports_bad_data_without_traceback(tmp_path, capsys):
    src = write(tmp_path / "m.en", ["a", "b", "c"])
    tgt = write(tmp_path / "m.de", ["x", "y"])
    code = cli(["train", "--task", "translation", "--backbone", "mini", "--data", f"train={src},{tgt}",
                "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "misaligned parallel files" in err and "Traceback" not in err


# ---- encoding and scoring --------------------------------------------------------------------------
def test_long_targets_are_truncated_with_a_count(tmp_path, caplog):
    from nlpkit.engine.backbone import Backbone

    t = task(max_target_length=6)
    examples = [{"source": "short one", "target": "kurz", "line": 1},
                {"source": "long one", "target": "ein sehr sehr langer Satz mit vielen Wörtern", "line": 2},
                {"source": "long two", "target": "noch ein viel zu langer Satz mit Wörtern", "line": 3}]
    backbone = Backbone.create("mini", (x for e in examples for x in (e["source"], e["target"])), vocab_size=300)
    t.setup(backbone)
    with caplog.at_level(logging.WARNING):
        features = t.encode(examples)
    assert "2 of 3 target(s) longer than max_target_length=6" in caplog.text and "line/record 2" in caplog.text
    assert [len(f["labels"]) for f in features][1:] == [6, 6]
    assert all(f["labels"][-1] == backbone.tokenizer.eos_token_id for f in features)


def test_score_reports_sacrebleu_signature_and_chrf():
    t = task()
    examples = [{"source": "s", "target": "Der Hund sieht die Katze."}, {"source": "s", "target": "Ein Haus."}]
    perfect = [{"text": e["target"], "tokens": 5, "at_limit": False} for e in examples]
    scores = t.score(perfect, examples)
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert "tok:13a" in scores["bleu_signature"] and "nrefs:1" in scores["bleu_signature"]
    assert scores["num_beams"] == 1 and scores["max_new_tokens"] == 256
    worse = t.score([{"text": "Die Katze.", "tokens": 2, "at_limit": False}, perfect[1]], examples)
    assert worse["bleu"] < 60 and worse["chrf"] < 100


def test_t5_gets_its_task_prefix():
    from transformers import BertConfig, T5Config

    assert task().default_prefix(T5Config()) == "translate English to German: "
    assert task(source_lang="en", target_lang="ro").default_prefix(
        T5Config(task_specific_params={"translation_en_to_ro": {"prefix": "translate English to Romanian: "}})) \
        == "translate English to Romanian: "
    assert task().default_prefix(BertConfig()) == ""


# ---- learning: the whole path, tokenizer to BLEU ---------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The embedded phrase-book, a from-scratch mini backbone with a tied decoder head, 400 steps."""
    tmp = tmp_path_factory.mktemp("translation")
    config = tiny_config("translation", tmp, max_steps=400, lr=2e-3, batch_size=32, eval_every=400, log_every=100)
    config["backbone"]["vocab_size"] = 1000
    return nlpkit.train(config)


@pytest.mark.slow
def test_tiny_model_learns_phrase_book_bleu_over_90(trained):
    scores = trained.metrics["tasks"]["translation"]
    assert scores["bleu"] > 90, scores
    assert scores["chrf"] > 90 and scores["outputs_at_limit"] == 0
    assert scores["num_beams"] == 1 and "bleu_signature" in scores


@pytest.mark.slow
def test_checkpoint_predicts_and_beam_override(trained, capsys):
    pipe = nlpkit.load(trained.output_dir)
    pred = pipe.predict("The old dog sees a red car.")
    assert pred["text"] == "Der alte Hund sieht ein rotes Auto."
    beams = pipe.predict(["The old dog sees a red car.", "My cat likes this small bird."], num_beams=4)
    assert [p["text"] for p in beams] == ["Der alte Hund sieht ein rotes Auto.", "Meine Katze mag diesen kleinen Vogel."]
    assert pipe.task().options.num_beams == 1  # the override is for that call only
    assert cli(["predict", str(trained.output_dir), "A young horse needs the key.", "--num-beams", "3"]) == 0
    assert capsys.readouterr().out.strip() == "Ein junges Pferd braucht den Schlüssel."
