"""The adapters' one record (AdapterSpec, BaseRef) and the one way a model is built (build.build_model)."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nlpkit.engine import build
from nlpkit.engine.adapters import AdapterSpec, BaseRef
from nlpkit.engine.backbone import PRESETS, Backbone, train_tokenizer
from nlpkit.engine.config import BackboneConfig, PeftConfig, TaskEntry
from nlpkit.engine.model import MultiTaskModel
from nlpkit.engine.task_data import build_task
from nlpkit.sdk.errors import CheckpointError

from llm_models import decoder_folder

OLD = Path(__file__).resolve().parent / "fixtures" / "old_checkpoints"
BASE = BaseRef(spec="/models/qwen", fingerprint="0123456789abcdef0123", dtype="auto", vocab=404)


def test_a_spec_goes_to_json_and_back_unchanged():
    spec = AdapterSpec(method="dora", r=4, alpha=8.0, dropout=0.0, targets=["q_proj", "v_proj"],
                       trained_tokens=("<e1>", "<e2>"), storage="adapter", base=BASE)
    assert spec.targets == ("q_proj", "v_proj")  # a list (YAML, JSON) is kept as a tuple: the spec is hashable
    data = json.loads(json.dumps(spec.to_json()))
    assert data == {"method": "dora", "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                    "trained_tokens": ["<e1>", "<e2>"], "storage": "adapter"}
    base = json.loads(json.dumps(spec.base_json()))
    assert AdapterSpec.from_json(data, base) == spec
    assert hash(spec) == hash(AdapterSpec.from_json(data, base))


def test_a_spec_is_frozen():
    spec = AdapterSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.storage = "adapter"
    with pytest.raises(dataclasses.FrozenInstanceError):
        BASE.fingerprint = "another"


def test_storage_and_base_go_together_and_the_method_is_one_peft_runs():
    with pytest.raises(ValueError, match="needs the base"):
        AdapterSpec(storage="adapter")
    with pytest.raises(ValueError, match="needs the base"):
        AdapterSpec(storage="full", base=BASE)
    with pytest.raises(ValueError, match="storage must be"):
        AdapterSpec(storage="merged")
    with pytest.raises(ValueError, match="method must be"):
        AdapterSpec(method="ia3")


def test_from_config_keeps_the_users_settings_and_sorts_the_tokens():
    config = PeftConfig(method="lora", r=16, alpha=32.0, dropout=0.1, target_modules="all-linear")
    spec = AdapterSpec.from_config(config, tokens=["<e2>", "<e1>", "<e2>"], base=BASE)
    assert (spec.method, spec.r, spec.alpha, spec.dropout, spec.targets) == ("lora", 16, 32.0, 0.1, "all-linear")
    assert spec.trained_tokens == ("<e1>", "<e2>") and spec.storage == "adapter" and spec.base is BASE
    assert AdapterSpec.from_config(config).storage == "full"


def test_to_peft_is_the_lora_config_of_the_spec():
    lora = AdapterSpec(method="dora", r=4, alpha=8.0, dropout=0.0, targets=("q_proj",)).to_peft(token_ids=[5, 7])
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.use_dora) == (4, 8.0, 0.0, True)
    assert set(lora.target_modules) == {"q_proj"} and lora.trainable_token_indices == [5, 7]
    with pytest.raises(ValueError, match="auto"):
        AdapterSpec().to_peft()  # peft's default targets depend on the architecture


def test_the_old_lora_checkpoint_reads_and_writes_back_the_same_record():
    saved = json.loads((OLD / "lora-decoder" / "nlpkit.json").read_text())["backbone"]
    spec = AdapterSpec.from_json(saved["peft"], saved.get("base"))
    assert (spec.method, spec.r, spec.targets, spec.storage, spec.base) == ("lora", 8, "auto", "full", None)
    assert spec.to_json() == saved["peft"]
    assert build.adapters_of(OLD / "lora-decoder") == spec
    assert build.adapters_of(OLD / "multitask-encoder") is None


def test_a_record_written_before_trained_tokens_and_storage_reads_as_full():
    spec = AdapterSpec.from_json({"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "auto"})
    assert spec.storage == "full" and spec.trained_tokens == ()


def test_a_damaged_record_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="backbone.peft"):
        AdapterSpec.from_json({"method": "lora", "r": 8})
    with pytest.raises(CheckpointError, match="spec and fingerprint"):
        AdapterSpec.from_json({"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "auto",
                               "storage": "adapter"}, {"spec": "/models/qwen"})


def _task(type_name: str = "ner"):
    task = build_task(TaskEntry(type=type_name, options={"max_length": 32}))
    examples = list(task.read(task.default_data()["train"]))[:8]
    task.fit(examples)
    return task, examples


def _outputs(model: MultiTaskModel, task, examples) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(task.name, task.collate(task.encode(examples)))
    return out["logits"] if "logits" in out else out["loss"]


def test_build_model_on_a_preset_is_the_model_built_by_hand():
    task, examples = _task()
    texts = list(task.texts(examples))
    torch.manual_seed(0)
    built = build.build_model(BackboneConfig(spec="mini", vocab_size=300), [task], texts=texts)

    torch.manual_seed(0)  # what the trainer did before build_model
    preset = {k: v for k, v in PRESETS["mini"].items() if k != "vocab_size"}
    backbone = Backbone.from_scratch(preset, train_tokenizer(texts, 300), "mini")
    backbone.set_attention("sdpa")
    backbone.add_special_tokens(task.special_tokens())
    task.setup(backbone)
    by_hand = MultiTaskModel(backbone, {task.name: task.build_head(backbone)})

    mine, theirs = built.state_dict(), by_hand.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(_outputs(built, task, examples), _outputs(by_hand, task, examples))


@pytest.mark.parametrize("run", ["multitask-encoder", "lora-decoder"])
def test_build_model_on_a_saved_run_is_the_model_assembled_from_its_files(run):
    folder = OLD / run
    built = build.build_model(folder)
    tasks = build.saved_tasks(folder)
    backbone = Backbone.from_saved(folder, json.loads((folder / "nlpkit.json").read_text())["backbone"]["spec"])
    spec = build.adapters_of(folder)
    if spec is not None:
        from nlpkit.engine import adapters

        adapters.apply(backbone, PeftConfig(method=spec.method, r=spec.r, alpha=spec.alpha, dropout=spec.dropout,
                                            target_modules=spec.targets), tokens=spec.trained_tokens)
    for task in tasks:
        task.setup(backbone)
    by_hand = MultiTaskModel(backbone, {t.name: t.build_head(backbone) for t in tasks})
    from safetensors.torch import load_file

    by_hand.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    assert built.backbone.peft == backbone.peft
    mine, theirs = built.state_dict(), by_hand.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_an_adapter_only_save_refuses_a_base_with_another_fingerprint(tmp_path):
    base = Path(decoder_folder(tmp_path, "qwen2"))
    right = Backbone.from_pretrained(str(base)).base
    wrong = AdapterSpec(storage="adapter", base=dataclasses.replace(right, fingerprint="f" * 20))
    with pytest.raises(CheckpointError, match="trained on another") as err:
        build._adapter_backbone(tmp_path, wrong)
    assert right.fingerprint in str(err.value) and "f" * 20 in str(err.value)
    gone = AdapterSpec(storage="adapter", base=dataclasses.replace(right, spec=str(tmp_path / "nowhere")))
    with pytest.raises(CheckpointError, match="must be loaded first"):
        build._adapter_backbone(tmp_path, gone)


def test_the_checkpoint_format_knows_nothing_of_models():
    """checkpoint.py reads and writes files; what a model saves is the model's (MultiTaskModel.saved_names)."""
    import ast

    import nlpkit.engine.checkpoint as module

    tree = ast.parse(Path(module.__file__).read_text())
    siblings = set()  # the engine modules it imports: "from .x import y" and "from . import x"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            siblings |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    assert "sharding" in siblings  # the check sees what it looks for
    assert not siblings & {"adapters", "backbone", "build", "model"}
