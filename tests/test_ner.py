import gzip

import pytest

from conftest import benchmark_dir
from nlpkit import DataError
from nlpkit.engine.backbone import train_tokenizer
from nlpkit_tasks.ner import NerTask, detect_scheme, read_conll, spans, to_iob2


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_reader_handles_columns_docstart_blank_lines_and_crlf(tmp_path):
    path = write(tmp_path, "a.txt",
                 "-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-NP B-ORG\r\nrejects VBZ B-VP O\r\n\r\n\r\n"
                 "Peter B-PER\nBlackburn I-PER\n\n-DOCSTART- -X- O\nLondon X Y Z B-LOC")
    sents = read_conll(path)
    assert [s["tokens"] for s in sents] == [["EU", "rejects"], ["Peter", "Blackburn"], ["London"]]
    assert [s["tags"] for s in sents] == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [s["line"] for s in sents] == [3, 7, 11]


def test_reader_reads_gzip(tmp_path):
    path = tmp_path / "a.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("Paris B-LOC\n")
    assert read_conll(str(path))[0]["tags"] == ["B-LOC"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.txt", "Paris B-LOC\n\nlonely\n")
    with pytest.raises(DataError) as err:
        read_conll(path)
    assert f"{path}:3:" in str(err.value) and "at least 2 columns" in str(err.value)


def test_bad_tag_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.txt", "Paris B-LOC\nis X-FOO\n")
    with pytest.raises(DataError, match=r"bad.txt:2: .*'X-FOO'"):
        read_conll(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_conll(str(tmp_path / "nope.txt"))


def test_schemes_are_detected_and_converted_to_iob2():
    iob1 = [{"tags": ["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]}]
    assert detect_scheme(iob1) == "iob1"
    assert to_iob2(iob1[0]["tags"], "iob1") == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]
    bioes = ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "U-LOC"]
    assert detect_scheme([{"tags": bioes}]) == "bioes"
    assert to_iob2(bioes, "bioes") == ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-LOC"]
    assert detect_scheme([{"tags": ["B-PER", "I-PER", "O"]}]) == "iob2"


def test_spans_follow_conlleval_for_stray_inside_tags():
    assert spans(["B-PER", "I-PER", "O", "I-LOC", "I-ORG", "B-ORG", "B-ORG"]) == [
        ("PER", 0, 2), ("LOC", 3, 4), ("ORG", 4, 5), ("ORG", 5, 6), ("ORG", 6, 7)]


@pytest.fixture(scope="module")
def task():
    t = NerTask()
    train = [{"tokens": ["Angela", "Merkelovitz", "visited", "Paris", "."],
              "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}]
    t.fit(train)

    class FakeBackbone:
        tokenizer = train_tokenizer(["Angela visited Paris ."] * 20, vocab_size=300)
        kind = "encoder"

    t.setup(FakeBackbone())
    return t


def test_labels_are_learned_with_o_first(task):
    assert task.labels == ["O", "B-LOC", "B-PER", "I-PER"]


def test_labels_go_on_the_first_sub_token_of_each_word_only(task):
    ex = {"tokens": ["Angela", "Merkelovitz", "visited"], "tags": ["B-PER", "I-PER", "O"]}
    (feat,) = task.encode([ex])
    word_ids = feat["word_ids"]
    assert word_ids[0] is None and word_ids[-1] is None  # [CLS] ... [SEP]
    assert word_ids.count(1) > 1  # the unseen word is split into several pieces
    expected, prev = [], None
    for w in word_ids:
        expected.append(-100 if w is None or w == prev else task.labels.index(ex["tags"][w]))
        prev = w
    assert feat["labels"] == expected
    assert sum(label != -100 for label in feat["labels"]) == 3


def test_unknown_dev_tag_names_file_and_line(task, tmp_path):
    path = write(tmp_path, "dev.txt", "Paris B-LOC\nToyota B-ORG\n")
    with pytest.raises(DataError, match=r"dev.txt:2: tag 'B-ORG'"):
        task.check(list(task.read(path)), path)


def test_metric_matches_hand_computed_values(task):
    # gold: PER(0-2), LOC(3)   | second sentence gold: LOC(0)
    # pred: PER(0-1) wrong span, LOC(3) right | LOC(0) right, extra PER(1)
    examples = [{"tags": ["B-PER", "I-PER", "O", "B-LOC"]}, {"tags": ["B-LOC", "O"]}]
    preds = [{"tags": ["B-PER", "O", "O", "B-LOC"]}, {"tags": ["B-LOC", "B-PER"]}]
    scores = task.score(preds, examples)
    # 2 correct of 4 predicted, 2 correct of 3 gold
    assert scores["precision"] == pytest.approx(50.0)
    assert scores["recall"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3) * 100)
    assert scores["per_type"]["LOC"]["f1"] == pytest.approx(100.0)
    assert scores["per_type"]["PER"]["precision"] == pytest.approx(0.0)
    assert scores["accuracy"] == pytest.approx(100 * 4 / 6)


def test_default_and_strict_modes_differ_on_invalid_sequences():
    examples = [{"tags": ["B-PER", "I-PER", "O"]}]
    preds = [{"tags": ["I-PER", "I-PER", "O"]}]  # a stray I- counts as an entity start in conlleval
    assert NerTask().score(preds, examples)["f1"] == pytest.approx(100.0)
    assert NerTask(options={"strict": True}).score(preds, examples)["f1"] == pytest.approx(0.0)


def test_decode_gives_character_offsets_of_raw_text(task):
    ex = task.parse_input("Angela  Merkelovitz visited Paris.")
    (feat,) = task.encode([ex])
    ids = []
    prev = None
    for w in feat["word_ids"]:
        tag = {0: "B-PER", 1: "I-PER", 3: "B-LOC"}.get(w, "O") if w is not None and w != prev else "O"
        ids.append(task.labels.index(tag))
        prev = w
    (pred,) = task.decode([ex], [feat], [(ids, [0.9] * len(ids))])
    assert pred["entities"] == [
        {"type": "PER", "text": "Angela  Merkelovitz", "start": 0, "end": 19, "score": 0.9},
        {"type": "LOC", "text": "Paris", "start": 28, "end": 33, "score": 0.9},
    ]


def test_reads_the_conll2003_benchmark_as_it_is():
    path = benchmark_dir("conll2003") / "valid.txt.gz"
    sents = list(NerTask().read(str(path)))
    assert len(sents) == 3250
    assert sum(len(s["tokens"]) for s in sents) == 51362
    assert sum(t.startswith("B-") for s in sents for t in s["tags"]) == 1842 + 1837 + 1341 + 922


def test_hub_rows_with_class_label_tags_are_read():
    import datasets
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])),
    })
    rows = datasets.Dataset.from_dict({"tokens": [["Ana", "Silva", "in", "Porto"]], "ner_tags": [[1, 2, 0, 3]]},
                                      features=features)
    (ex,) = list(NerTask().read_hub(rows, "hub:x:train"))
    assert ex["tags"] == ["B-PER", "I-PER", "O", "B-LOC"]


def test_bad_hub_spec_and_offline_hub_are_clear_errors():
    from nlpkit.sdk.data import load_hub_split

    with pytest.raises(DataError, match="expected hub:DATASET:SPLIT"):
        load_hub_split("hub:only-a-name")
    with pytest.raises(DataError):  # offline in tests (or 'datasets' missing): a DataError, never a hang
        load_hub_split("hub:no-such-user/no-such-dataset:train")


@pytest.mark.parametrize("late", [["O", "I-PER"], ["S-LOC", "O"]])
def test_auto_scheme_read_in_one_pass_equals_detecting_over_the_whole_file_first(tmp_path, late):
    """The reader yields sentences before the first sign of another scheme as they are (they read the same under
    every scheme) and decides the rest from the whole file: the same result as two passes."""
    sentences = [(["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]), (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
                 (["Hi", "Bob"], late), (["New", "York", "Times"], ["I-ORG", "I-ORG", "I-ORG"])]
    path = tmp_path / "mixed.conll"
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(ws, ts)) for ws, ts in sentences) + "\n")
    raw = read_conll(str(path))
    scheme = detect_scheme(raw)
    want = [dict(s, tags=to_iob2(s["tags"], scheme)) for s in raw]
    assert list(NerTask().read(str(path))) == want
    assert scheme == ("iob1" if late[1] == "I-PER" else "bioes")
