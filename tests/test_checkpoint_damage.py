"""A damaged checkpoint is a CheckpointError naming the file, at the one place each file is read.

The bad-input sweep (tests/bad_inputs/cli.yaml) damages files in place, keeping their size so the size
listing in nlpkit.json cannot see it. Damage that changes a file's size is caught by that listing, so the
cases here also rewrite the listing: they reach the loader's own checks (tensor shapes, missing tensors).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nlpkit
from conftest import tiny_config
from nlpkit.engine import build, checkpoint
from nlpkit.sdk.errors import CheckpointError


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    nlpkit.train(tiny_config("ner", folder, max_steps=2, plots=False, tensorboard=False))
    return folder / "run" / "best"


@pytest.fixture
def ckpt(trained, tmp_path) -> Path:
    copy = tmp_path / "best"
    shutil.copytree(trained, copy)
    return copy


def _relist(folder: Path) -> None:
    """Make nlpkit.json's size listing agree with the (damaged) files, as a tool rewriting them would."""
    meta = json.loads((folder / checkpoint.META_FILE).read_text())
    meta["files"] = {k: (folder / k).stat().st_size for k in meta["files"] if (folder / k).is_file()}
    (folder / checkpoint.META_FILE).write_text(json.dumps(meta))


def _rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / checkpoint.WEIGHTS_FILE))
    change(tensors)
    save_file(tensors, str(folder / checkpoint.WEIGHTS_FILE))
    _relist(folder)


def test_the_undamaged_copy_loads(ckpt):
    assert checkpoint.check_files(ckpt) == ckpt
    assert nlpkit.load(ckpt).predict(["Anna visited Lisbon ."])


def test_tensor_of_another_shape(ckpt):
    def shrink(tensors):
        name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
        tensors[name] = tensors[name][:10].clone()

    _rewrite_weights(ckpt, shrink)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(does not match|cannot load)"):
        nlpkit.load(ckpt)
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match"):
        build.load_backbone(ckpt)


def test_missing_tensor(ckpt):
    def drop(tensors):
        del tensors[next(k for k in tensors if k.startswith("heads."))]

    _rewrite_weights(ckpt, drop)
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the model: missing \['heads\."):
        nlpkit.load(ckpt)


def test_config_that_builds_another_model(ckpt):
    config = json.loads((ckpt / "backbone" / "config.json").read_text())
    config["num_hidden_layers"] += 1  # a layer the weights do not have
    (ckpt / "backbone" / "config.json").write_text(json.dumps(config))
    _relist(ckpt)
    assert checkpoint.check_files(ckpt)  # valid JSON of the right shape: only loading can tell
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the model: missing"):
        nlpkit.load(ckpt)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"model_type": "no-such-model"}', "model_type 'no-such-model' is not known"),
    ('{"model_type": "bert", "hidden_size": "big"}', "damaged"),
])
def test_backbone_config(ckpt, text, message):
    (ckpt / "backbone" / "config.json").write_text(text)
    _relist(ckpt)
    with pytest.raises(CheckpointError, match=message) as exc:
        build.load_backbone(ckpt)
    assert str(ckpt / "backbone" / "config.json") in str(exc.value)


def test_tokenizer_folder(ckpt):
    (ckpt / "tokenizer" / "tokenizer.json").write_text('{"model": 3}')
    _relist(ckpt)
    with pytest.raises(CheckpointError, match="the tokenizer cannot be loaded") as exc:
        nlpkit.load(ckpt)
    assert str(ckpt / "tokenizer") in str(exc.value)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(tasks=5), "tasks: expected a list"),
    (lambda m: m.pop("backbone"), "backbone: expected a mapping, got None"),
    (lambda m: m["backbone"].pop("spec"), "backbone.spec: missing"),
    (lambda m: m["tasks"][0].update(version="9"), "saved by ner.v9, but the installed plugin is v1"),
    (lambda m: m["tasks"][0].update(version="new"), r"tasks\[0\].version: expected an integer"),
    (lambda m: m["tasks"][0].update(state=[1]), r"tasks\[0\].state: expected a mapping"),
    (lambda m: m["tasks"][0].update(state={}), "its saved state cannot be loaded"),
    (lambda m: m["tasks"][0].update(options={"max_length": "x"}), "max_length: expected an integer"),
])
def test_nlpkit_json_of_the_wrong_shape(ckpt, change, message):
    meta = json.loads((ckpt / checkpoint.META_FILE).read_text())
    change(meta)
    (ckpt / checkpoint.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message) as exc:
        nlpkit.load(ckpt)
    assert str(ckpt / checkpoint.META_FILE) in str(exc.value)


def test_garbage_safetensors_header_is_found_without_reading_weights(ckpt):
    path = ckpt / checkpoint.WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[:8] = b"\xff" * 8  # header length: absurd; the file keeps its size
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        checkpoint.check_files(ckpt)


def test_keys_a_later_version_adds_are_kept(ckpt):
    meta = json.loads((ckpt / checkpoint.META_FILE).read_text())
    meta["backbone"]["future"] = {"x": 1}
    meta["tasks"][0]["future"] = [1]
    (ckpt / checkpoint.META_FILE).write_text(json.dumps(meta))
    loaded = checkpoint.read_meta(ckpt)
    assert loaded["tasks"][0]["future"] == [1] and loaded["backbone"]["future"] == {"x": 1}
    assert nlpkit.load(ckpt).predict(["Anna visited Lisbon ."])
