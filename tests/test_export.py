"""`nlpkit export`: a transformers folder gives nlpkit's predictions through transformers' own loading
(pipeline() where this transformers has one for the class), the tasks without a standard class fall
back to backbone + heads, and each ONNX graph matches torch within 1e-4 under onnxruntime."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nlpkit
from nlpkit.apps.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_generation import make_t5  # noqa: E402
from test_serve import INPUTS, train_all_tasks  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    # pooling=cls: the multiple-choice head is then AutoModelForMultipleChoice's function
    return train_all_tasks(tmp_path_factory.mktemp("export"), **{"reading-comprehension": {"pooling": "cls"}})


@pytest.fixture(scope="module")
def pipe(run_dir):
    return nlpkit.load(run_dir, device="cpu")


def export(run_dir, out, fmt="transformers", task=None, capsys=None):
    argv = ["export", str(run_dir), str(out), "--format", fmt] + (["--task", task] if task else [])
    assert main(argv) == 0
    return json.loads((Path(out) / "nlpkit_export.json").read_text())


# ---- transformers -----------------------------------------------------------------------------------
def test_ner_through_the_token_classification_pipeline(run_dir, pipe, tmp_path):
    """Per token, as the pipeline gives it: the first sub-token of each word carries nlpkit's tag and the
    entity scores are the mean of those tokens' scores. (The pipeline's "first" aggregation guesses word
    starts from spaces, which a byte-level BPE vocabulary this small defeats: a lone "Ġ" token.)"""
    from transformers import pipeline

    info = export(run_dir, tmp_path / "ner", task="ner")
    assert info["written"] == {"ner": "AutoModelForTokenClassification"} and info["max_diff"]["ner"] <= 1e-4
    hf = pipeline("token-classification", model=str(tmp_path / "ner"), aggregation_strategy="none",
                  ignore_labels=[], device="cpu")
    task = pipe.task("ner")
    texts = INPUTS["ner"] + ["Peter Blackburn of the European Commission said on Thursday ."]
    entities = 0
    for text, ours in zip(texts, pipe.predict(texts, task="ner")):
        feature = task.encode([task.parse_input(text)])[0]
        assert hf.tokenizer(text)["input_ids"] == feature["input_ids"]  # both sides see the same tokens
        by_index = {e["index"]: e for e in hf(text)}
        firsts = [pos for pos, w in enumerate(feature["word_ids"])
                  if w is not None and w != (feature["word_ids"][pos - 1] if pos else None)]
        assert [by_index[pos]["entity"] for pos in firsts] == ours["tags"], text
        scores = [float(by_index[pos]["score"]) for pos in firsts]
        from nlpkit_tasks.ner import spans

        for (kind, a, b), entity in zip(spans(ours["tags"]), ours["entities"]):
            assert entity["type"] == kind and abs(sum(scores[a:b]) / (b - a) - entity["score"]) <= 1e-4
        entities += len(ours["entities"])
    assert entities > 0  # the untrained model does tag something: scores were compared


@pytest.mark.parametrize("task", ["classification", "sentiment"])
def test_classification_through_the_text_classification_pipeline(run_dir, pipe, tmp_path, task):
    from transformers import pipeline

    info = export(run_dir, tmp_path / task, task=task)
    assert info["written"] == {task: "AutoModelForSequenceClassification"}
    hf = pipeline("text-classification", model=str(tmp_path / task), top_k=None, device="cpu")
    for text, ours in zip(INPUTS[task], pipe.predict(INPUTS[task], task=task)):
        theirs = {x["label"]: x["score"] for x in hf([text])[0]}
        assert max(theirs, key=theirs.get) == ours["label"]
        assert theirs.keys() == ours["probabilities"].keys()
        assert all(abs(theirs[k] - ours["probabilities"][k]) <= 1e-4 for k in theirs)


def test_qa_through_auto_model_for_question_answering(run_dir, pipe, tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    export(run_dir, tmp_path / "qa", task="qa")
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "qa")
    for ex, ours in zip(INPUTS["qa"], pipe.predict(INPUTS["qa"], task="qa")):
        enc = tok(ex["question"], ex["context"], return_offsets_mapping=True, return_tensors="pt")
        offsets, seq = enc.pop("offset_mapping")[0].tolist(), enc.sequence_ids(0)
        with torch.inference_mode():
            out = model(**enc)
        start, end = out.start_logits[0].tolist(), out.end_logits[0].tolist()
        ctx = [i for i, s in enumerate(seq) if s == 1]
        s, e = max(((s, e) for s in ctx for e in ctx if s <= e < s + 30), key=lambda p: start[p[0]] + end[p[1]])
        a, b = offsets[s][0], offsets[e][1]
        while a < b and ex["context"][a].isspace():  # nlpkit's answers carry no surrounding blanks
            a += 1
        while a < b and ex["context"][b - 1].isspace():
            b -= 1
        span = ours.get("best_span", ours)  # with "no answer" allowed, the best span is kept beside it
        assert (a, b) == (span["start"], span["end"]) and ex["context"][a:b] == span["answer"]


def test_reading_comprehension_through_auto_model_for_multiple_choice(run_dir, pipe, tmp_path):
    from transformers import AutoModelForMultipleChoice, AutoTokenizer

    from nlpkit_tasks.reading_comprehension import pair_text

    info = export(run_dir, tmp_path / "rc", task="reading-comprehension")
    assert info["written"] == {"reading-comprehension": "AutoModelForMultipleChoice"}
    model = AutoModelForMultipleChoice.from_pretrained(tmp_path / "rc").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "rc")
    for ex, ours in zip(INPUTS["reading-comprehension"], pipe.predict(INPUTS["reading-comprehension"],
                                                                      task="reading-comprehension")):
        enc = tok([ex["article"]] * len(ex["options"]), [pair_text(ex["question"], o) for o in ex["options"]],
                  padding=True, return_tensors="pt")
        with torch.inference_mode():
            probs = model(**{k: v[None] for k, v in enc.items()}).logits.softmax(-1)[0].tolist()
        assert int(np.argmax(probs)) == ours["answer"]
        assert np.allclose(probs, ours["probabilities"], atol=1e-4)


def test_t5_translation_through_auto_model_for_seq2seq_lm(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    pairs = [("the dog sees the cat .", "der Hund sieht die Katze ."), ("a cat sees the dog .", "eine Katze sieht den Hund .")]
    (tmp_path / "pairs.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs))
    make_t5(tmp_path / "t5", [x for p in pairs for x in p] * 20 + ["translate English to German:"])
    run = nlpkit.train({"tasks": [{"type": "translation", "options": {"max_new_tokens": 8},
                                   "data": {"train": str(tmp_path / "pairs.tsv"), "dev": str(tmp_path / "pairs.tsv")}}],
                        "backbone": {"spec": str(tmp_path / "t5")},
                        "trainer": {"max_steps": 2, "batch_size": 2},
                        "logging": {"progress": False, "plots": False, "tensorboard": False},
                        "output_dir": str(tmp_path / "run")}).output_dir
    info = export(run, tmp_path / "hf")
    assert info["written"] == {"translation": "AutoModelForSeq2SeqLM"}
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert model.config.prefix == "translate English to German: "
    sources = [en for en, _ in pairs]
    ours = nlpkit.load(run, device="cpu").predict(sources)
    for source, pred in zip(sources, ours):
        with torch.inference_mode():
            ids = model.generate(**tok(model.config.prefix + source, return_tensors="pt"))[0]
        assert tok.decode(ids, skip_special_tokens=True).strip() == pred["text"]


@pytest.mark.parametrize("task,why", [
    ("relation-extraction", "entity-pair head"),
    ("translation", "tied to the encoder"),
    (None, "several tasks share one backbone"),
])
def test_no_standard_class_falls_back_to_backbone_and_heads(run_dir, pipe, tmp_path, task, why):
    from safetensors.torch import load_file
    from transformers import AutoModel

    out = tmp_path / "out"
    info = export(run_dir, out, task=task)
    names = [task] if task else pipe.task_names
    assert set(info["written"]) == set(names) and all(why in info["notes"][n] for n in names)
    heads = load_file(str(out / "heads.safetensors"))
    for name in names:
        own = pipe.model.heads[name].state_dict()
        assert all(torch.equal(heads[f"{name}.{k}"], v) for k, v in own.items())
    backbone = AutoModel.from_pretrained(out / "backbone")
    ids = torch.tensor([[2, 40, 41, 3]])
    with torch.inference_mode():
        assert torch.allclose(backbone(input_ids=ids).last_hidden_state,
                              pipe.model.backbone.encode(ids, torch.ones_like(ids)), atol=1e-5)
    card = (out / "README.md").read_text()
    assert why in card and json.loads((out / "nlpkit.json").read_text())["tasks"][0]["name"] == names[0]


def test_model_card_names_tasks_labels_data_metrics_config_and_license(run_dir, tmp_path):
    export(run_dir, tmp_path / "ner", task="ner")
    card = (tmp_path / "ner" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for words in ("## Task `ner` (ner)", "labels: O, B-LOC", "train data: `", "dev metrics (main score `f1`)",
                  "## Training config", f"nlpkit {nlpkit.__version__} checkpoint", "license: not known"):
        assert words in card, words
    assert "## Task `qa`" not in card  # only the exported task


def test_license_comes_from_the_base_model_card(tmp_path):
    from nlpkit.apps.export import base_model_license

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# model\n")
    assert base_model_license(str(tmp_path / "m")) == "apache-2.0"
    assert base_model_license("mini") is None


def test_refuses_a_folder_that_is_not_empty(run_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir), str(tmp_path / "out"), "--format", "transformers"]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "out" / "keep.txt").is_file()


@pytest.mark.parametrize("task", ["ner", "relation-extraction"])  # a standard class; backbone + heads
def test_a_loaded_pipeline_exports_the_files_its_folder_exports(run_dir, pipe, tmp_path, task, monkeypatch):
    from nlpkit.apps import predict
    from nlpkit.apps.export import export as run_export

    from_folder = run_export(run_dir, "transformers", tmp_path / "folder", task=task)

    def no_load(*a, **k):
        raise AssertionError("the export loaded the checkpoint again although it was given a loaded Pipeline")

    monkeypatch.setattr(predict, "load", no_load)
    from_pipe = run_export(pipe, "transformers", tmp_path / "pipe", task=task)
    assert from_pipe.written == from_folder.written and from_pipe.max_diff == from_folder.max_diff

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    ours, theirs = files(tmp_path / "pipe"), files(tmp_path / "folder")
    assert ours.keys() == theirs.keys() and "README.md" in ours
    assert [name for name in ours if ours[name] != theirs[name]] == []


def test_a_pipeline_loaded_for_other_predictions_is_refused(run_dir, tmp_path):
    from nlpkit.apps.export import export as run_export
    from nlpkit.sdk.errors import ConfigError

    quantized = nlpkit.load(run_dir, device="cpu", tasks=["ner"], quantize="int8")
    with pytest.raises(ConfigError, match="quantize='int8'.*nlpkit.load\\(DIR, device='cpu'\\)"):
        run_export(quantized, "transformers", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- onnx -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["ner", "reading-comprehension"])
def test_onnx_matches_torch_with_dynamic_batch_and_sequence(run_dir, pipe, tmp_path, task):
    import onnx
    import onnxruntime as ort

    from nlpkit.apps.export.onnx import sample_batch

    info = export(run_dir, tmp_path / "onnx", fmt="onnx", task=task)
    assert info["written"] == {task: f"{task}/model.onnx"} and info["max_diff"][task] <= 1e-4
    path = tmp_path / "onnx" / task / "model.onnx"
    graph = onnx.load(str(path)).graph
    ids = next(i for i in graph.input if i.name == "input_ids")
    assert all(d.dim_param for d in ids.type.tensor_type.shape.dim)  # both axes symbolic
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json.loads((tmp_path / "onnx" / task / "onnx.json").read_text())
    t = pipe.task(task)
    items = INPUTS[task] * 2 + (["A much longer sentence with many more words than any sample had , to be sure ."]
                                if task == "ner" else [])
    batch = sample_batch(t, items)  # another batch size and length than the export traced
    got = dict(zip(meta["outputs"], session.run(meta["outputs"], {k: batch[k].numpy() for k in meta["inputs"]})))
    with torch.inference_mode():
        ref = pipe.model.heads[task](pipe.model.backbone, batch)
    for k in meta["outputs"]:
        assert got[k].shape == tuple(ref[k].shape)
        assert np.abs(got[k] - ref[k].numpy()).max() <= 1e-4


def test_onnx_skips_generation_tasks_and_names_the_missing_extra(run_dir, tmp_path, monkeypatch, capsys):
    assert main(["export", str(run_dir), str(tmp_path / "o"), "--format", "onnx", "--task", "translation"]) == 2
    assert "generation task" in capsys.readouterr().err and not (tmp_path / "o").exists()
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", str(run_dir), str(tmp_path / "o"), "--format", "onnx"]) == 2
    assert "pip install 'nlpkit[onnx]'" in capsys.readouterr().err


# ---- runtime onnxruntime: nlpkit.load(DIR, runtime="onnxruntime") -----------------------------------
ONNX_TASKS = ["ner", "classification", "sentiment", "relation-extraction", "qa", "reading-comprehension"]


@pytest.fixture(scope="module")
def onnx_pipe(run_dir, tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("onnx-cache")
    old = os.environ.get("NLPKIT_CACHE")
    os.environ["NLPKIT_CACHE"] = str(cache)
    try:
        yield nlpkit.load(run_dir, runtime="onnxruntime"), cache
    finally:
        if old is None:
            os.environ.pop("NLPKIT_CACHE")
        else:
            os.environ["NLPKIT_CACHE"] = old


def _close(a, b, tol=1e-4):
    """Predictions equal, numbers within tol (the exported graph is checked against torch to 1e-4)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= tol
    return a == b


@pytest.mark.parametrize("task", ONNX_TASKS)
def test_onnxruntime_predicts_what_torch_predicts(pipe, onnx_pipe, task):
    onnx, _ = onnx_pipe
    assert onnx.runtime == "onnxruntime" and task in onnx._runner.heads
    ours, theirs = onnx.predict(INPUTS[task], task=task), pipe.predict(INPUTS[task], task=task)
    assert _close(ours, theirs), (ours, theirs)


def test_onnxruntime_scores_what_torch_scores(run_dir, pipe, onnx_pipe, tmp_path):
    onnx, _ = onnx_pipe
    dev = tmp_path / "dev.conll"
    dev.write_text("Angela B-PER\nMerkel I-PER\nvisited O\nParis B-LOC\n. O\n\nRome B-LOC\n\n")
    assert _close(onnx.evaluate(str(dev), task="ner"), pipe.evaluate(str(dev), task="ner"))


def test_onnxruntime_graphs_are_cached_by_checkpoint_content(run_dir, onnx_pipe, monkeypatch):
    from nlpkit.apps.export import onnx as export_module
    from nlpkit.apps import onnx_runtime

    onnx, cache = onnx_pipe
    folders = list(cache.glob("onnx/*/ner/model.onnx"))
    assert len(folders) == 1 and onnx._runner.folders["ner"] == folders[0].parent
    assert not list(cache.glob("onnx/*/.*"))  # no scratch folder left behind

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache holds this checkpoint's graphs")

    monkeypatch.setattr(export_module, "export_task_onnx", no_export)
    monkeypatch.setenv("NLPKIT_CACHE", str(cache))
    again = nlpkit.load(run_dir, runtime="onnxruntime")
    assert again._runner.folders == onnx._runner.folders
    best = nlpkit.engine.checkpoint.resolve(run_dir)
    assert onnx_runtime.fingerprint(best) == onnx_runtime.fingerprint(best)


def test_onnxruntime_fingerprint_changes_with_the_weights(run_dir, tmp_path):
    import shutil

    from nlpkit.apps import onnx_runtime

    best = nlpkit.engine.checkpoint.resolve(run_dir)
    copy = tmp_path / "copy"
    shutil.copytree(best, copy)
    assert onnx_runtime.fingerprint(copy) == onnx_runtime.fingerprint(best)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert onnx_runtime.fingerprint(copy) != onnx_runtime.fingerprint(best)


def test_onnxruntime_refuses_generation_tasks_and_other_precisions(run_dir, onnx_pipe):
    from nlpkit.sdk.errors import ConfigError

    onnx, _ = onnx_pipe
    with pytest.raises(ConfigError, match="translation.*runtime onnxruntime.*generation"):
        onnx.predict(INPUTS["translation"], task="translation")
    for kwargs, why in [({"precision": "bf16"}, "precision fp32"), ({"quantize": "int8"}, "no quantize"),
                        ({"device": "meta"}, "on CPU"), ({"runtime": "tensorrt"}, "runtime must be one of")]:
        with pytest.raises(ConfigError, match=why):
            nlpkit.load(run_dir, **{"runtime": "onnxruntime", **kwargs})


def test_onnxruntime_without_the_extra_names_it(run_dir, monkeypatch):
    from nlpkit.sdk.errors import ConfigError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'nlpkit\[onnx\]'"):
        nlpkit.load(run_dir, runtime="onnxruntime")


def test_cli_predict_and_evaluate_with_runtime_onnxruntime(run_dir, onnx_pipe, tmp_path, capsys, monkeypatch):
    _, cache = onnx_pipe
    monkeypatch.setenv("NLPKIT_CACHE", str(cache))
    outputs = {}
    for runtime in ("torch", "onnxruntime"):
        assert main(["predict", str(run_dir), "--task", "ner", "--json", "--runtime", runtime, *INPUTS["ner"]]) == 0
        outputs[runtime] = [json.loads(line)["prediction"] for line in capsys.readouterr().out.splitlines()]
    assert _close(outputs["onnxruntime"], outputs["torch"])
    dev = tmp_path / "dev.conll"
    dev.write_text("Angela B-PER\nMerkel I-PER\nvisited O\nParis B-LOC\n\n")
    scores = {}
    for runtime in ("torch", "onnxruntime"):
        assert main(["evaluate", str(run_dir), "--task", "ner", "--data", f"dev={dev}", "--json", "--no-report",
                     "--runtime", runtime]) == 0
        scores[runtime] = json.loads(capsys.readouterr().out)
    assert _close(scores["onnxruntime"], scores["torch"])
