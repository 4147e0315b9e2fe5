"""Decoder-only backbones and parameter-efficient fine-tuning: all eight tasks on tiny random Llama, Qwen2,
Gemma3 and GPT-2 models (one adapter, one head per task, one checkpoint), LoRA checkpoints that hold only
what was trained, the refusals (another base, QLoRA without a GPU), merged export, gradient checkpointing."""
import json
import os
from pathlib import Path

import pytest
import torch

import nlpkit
from nlpkit.engine import checkpoint
from nlpkit.engine.config import RunConfig
from nlpkit.sdk.errors import CheckpointError, ConfigError
from nlpkit.apps.predict import Pipeline
from nlpkit.engine.trainer import Trainer

from conftest import run_sections
from llm_models import KINDS, bert_folder, decoder_folder
from test_serve import INPUTS, RE_SAMPLES


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def all_tasks(tmp: Path) -> list[dict]:
    """Every built-in application, its data cut short so a few steps and one evaluation take seconds."""
    (tmp / "re.txt").write_text("".join(f'{i + 1}\t"{s}"\n{lab}\nComment:\n\n' for i, (s, lab) in enumerate(RE_SAMPLES * 4)))
    tasks = []
    for t in INPUTS:
        entry = {"type": t, "options": {"max_length": 64}}
        if t == "relation-extraction":
            entry["data"] = {"train": str(tmp / "re.txt"), "dev": str(tmp / "re.txt")}
        if t in ("translation", "summarization"):
            entry["options"].update(max_new_tokens=4, max_target_length=16)
        tasks.append(entry)
    return tasks


def train_run(tmp: Path, spec: str, tasks: list[dict], peft: dict | None = None, steps: int = 4, **trainer) -> Trainer:
    config = {"tasks": tasks, "backbone": {"spec": spec, **({"peft": peft} if peft else {})},
              **run_sections(**{"max_steps": steps, "batch_size": 4, "eval_every": steps, "progress": False,
                                "plots": False, "tensorboard": False, "lr": 1e-2, **trainer}),
              "output_dir": str(tmp / "run")}
    t = Trainer(RunConfig.from_dict(config))
    t.run()
    return t


def predictions(pipe: Pipeline) -> dict:
    return {t: pipe.predict(items, task=t) for t, items in INPUTS.items() if t in pipe.task_names}


def in_memory(trainer: Trainer) -> Pipeline:
    model = trainer.raw_model.eval()
    return Pipeline(model, trainer.tasks, {}, trainer.out, torch.device("cpu"))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for task in a:
        assert json.dumps(a[task], sort_keys=True) == json.dumps(b[task], sort_keys=True), task


@pytest.mark.parametrize("kind", KINDS)
def test_all_eight_tasks_train_on_one_decoder_with_one_adapter_and_reload_with_the_same_predictions(kind, models, tmp_path):
    trainer = train_run(tmp_path, decoder_folder(models, kind), all_tasks(tmp_path), peft={"method": "lora"})
    assert trainer.backbone.kind == "decoder"
    expected = predictions(in_memory(trainer))
    loaded = nlpkit.load(tmp_path / "run")
    assert sorted(loaded.task_names) == sorted(INPUTS)
    assert_same(predictions(loaded), expected)
    meta = checkpoint.read_meta(tmp_path / "run")
    assert meta["backbone"]["peft"]["storage"] == "adapter"
    names = checkpoint.weight_names(checkpoint.resolve(tmp_path / "run"))
    backbone_names = [n for n in names if n.startswith("backbone.")]
    # adapters, and the embedding rows of the relation markers only; never the frozen base layers
    assert backbone_names and all("lora_" in n or "trainable_tokens_delta" in n for n in backbone_names)
    assert any("trainable_tokens_delta" in n for n in backbone_names)
    assert all(any(n.startswith(f"heads.{t}.") for n in names) for t in INPUTS if t not in ("translation", "summarization"))


def test_a_lora_checkpoint_is_smaller_than_a_full_one_and_its_heads_come_back_trained(models, tmp_path):
    spec = decoder_folder(models, "llama")
    tasks = [{"type": "sentiment", "options": {"max_length": 64}}]
    lora = train_run(tmp_path / "lora", spec, tasks, peft={"method": "lora", "r": 4})
    full = train_run(tmp_path / "full", spec, tasks)
    lora_size = os.path.getsize(checkpoint.resolve(tmp_path / "lora" / "run") / "model.safetensors")
    full_size = os.path.getsize(checkpoint.resolve(tmp_path / "full" / "run") / "model.safetensors")
    print(f"checkpoint weights: LoRA {lora_size:,} bytes, full {full_size:,} bytes")
    assert lora_size < full_size / 3
    # the head is trained (not its initial random state) and is what the checkpoint gives back
    reloaded = nlpkit.load(tmp_path / "lora" / "run")
    head = dict(reloaded.model.heads["sentiment"].state_dict())
    trained = dict(lora.raw_model.heads["sentiment"].state_dict())
    assert all(torch.equal(head[k], trained[k]) for k in trained)
    assert_same(predictions(reloaded), predictions(in_memory(lora)))
    # the frozen base stayed the base: the full run changed its weights, the LoRA run did not
    base = nlpkit.load(tmp_path / "full" / "run").model.backbone
    assert not torch.equal(base.model.get_input_embeddings().weight,
                           reloaded.model.backbone.model.get_input_embeddings().weight)
    del full


def test_a_checkpoint_refuses_another_base_with_the_reason(models, tmp_path):
    import shutil

    spec = Path(decoder_folder(tmp_path / "own", "qwen2"))
    train_run(tmp_path, str(spec), [{"type": "sentiment", "options": {"max_length": 64}}], peft={"method": "lora"})
    other = Path(decoder_folder(tmp_path / "other", "qwen2", seed=1))  # same architecture, other weights
    shutil.rmtree(spec)
    shutil.copytree(other, spec)
    with pytest.raises(CheckpointError, match="trained on another") as err:
        nlpkit.load(tmp_path / "run")
    assert "fingerprint" in str(err.value)
    shutil.rmtree(spec)
    with pytest.raises(CheckpointError, match="must be loaded first"):
        nlpkit.load(tmp_path / "run")


def test_a_qlora_checkpoint_reloads_its_base_quantized_and_says_why_not_here(models, tmp_path):
    """A QLoRA checkpoint's base fingerprint is of the quantized weights, so loading it quantizes the base the
    same way (tests/test_gpu.py loads one on CUDA); without CUDA that is refused with the reason, before the
    base is read. A plain LoRA checkpoint records no quantization and loads as before."""
    import json

    from nlpkit.engine import checkpoint

    spec = decoder_folder(models, "qwen2")
    train_run(tmp_path, spec, [{"type": "sentiment", "options": {"max_length": 64}}], peft={"method": "lora"})
    best = checkpoint.resolve(tmp_path / "run")
    meta_file = Path(best) / checkpoint.META_FILE
    meta = json.loads(meta_file.read_text())
    assert meta["backbone"]["base"]["quantize"] is None
    nlpkit.load(tmp_path / "run")
    meta["backbone"]["base"]["quantize"] = "4bit"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="quantized to 4bit") as err:
        nlpkit.load(tmp_path / "run")
    assert "CUDA" in str(err.value) and "lora" in str(err.value)


def test_qlora_is_refused_without_a_cuda_gpu_before_anything_is_written(models, tmp_path):
    config = {"tasks": [{"type": "sentiment"}], "output_dir": str(tmp_path / "run"),
              "backbone": {"spec": decoder_folder(models, "llama"), "quantize": "4bit", "peft": {"method": "lora"}},
              "trainer": {"max_steps": 1, "cpu": True},
              "logging": {"progress": False}}
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        nlpkit.train(config)
    assert not (tmp_path / "run").exists()
    del config["backbone"]["peft"]
    with pytest.raises(ConfigError, match="--peft lora"):
        nlpkit.train(config)


def _loss(backbone_spec: str, gradient_checkpointing: bool, peft: dict | None) -> tuple[float, list[torch.Tensor]]:
    from nlpkit.engine.adapters import apply, enable_gradient_checkpointing
    from nlpkit.engine.backbone import Backbone
    from nlpkit.engine.config import PeftConfig
    from nlpkit.engine.model import MultiTaskModel
    from nlpkit.engine.task_data import build_task
    from nlpkit.engine.config import TaskEntry

    torch.manual_seed(0)
    backbone = Backbone.from_pretrained(backbone_spec)
    backbone.set_dropout(0.0)
    if peft:
        apply(backbone, PeftConfig(**peft))
    task = build_task(TaskEntry(type="ner", options={"max_length": 64}))
    examples = list(task.read(task.default_data()["train"]))[:8]
    task.fit(examples)
    task.setup(backbone)
    model = MultiTaskModel(backbone, {"ner": task.build_head(backbone)})
    if gradient_checkpointing:
        assert enable_gradient_checkpointing(model) >= 1
    model.train()
    loss = model("ner", task.collate(task.encode(examples)))["loss"]
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("peft", [None, {"method": "lora"}], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(models, peft):
    spec = decoder_folder(models, "llama")
    plain, plain_grads = _loss(spec, False, peft)
    checked, checked_grads = _loss(spec, True, peft)
    assert abs(plain - checked) <= 1e-5
    assert len(plain_grads) == len(checked_grads) and all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, checked_grads))


def test_gradient_checkpointing_trains_a_lora_run_end_to_end(models, tmp_path):
    trainer = train_run(tmp_path, decoder_folder(models, "gemma3"), [{"type": "ner", "options": {"max_length": 64}}],
                        peft={"method": "lora"}, gradient_checkpointing=True)
    assert trainer.backbone.model.is_gradient_checkpointing
    assert nlpkit.load(tmp_path / "run").predict(["Angela Merkel visited Paris ."])[0]["tags"]


def test_merged_export_loads_in_transformers_without_peft_and_matches_the_adapters(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from nlpkit.apps.cli import main

    spec = decoder_folder(models, "llama")
    train_run(tmp_path, spec, [{"type": "causal-lm", "options": {"max_length": 32}}],
              peft={"method": "lora", "target_modules": "all-linear"})
    from nlpkit.apps.export import export

    with pytest.raises(ConfigError, match="--merge"):
        export(tmp_path / "run", "transformers", tmp_path / "plain")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "merged"), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapter = nlpkit.load(tmp_path / "run").model.backbone.model.eval()
    ids = torch.randint(5, 300, (2, 12))
    with torch.no_grad():
        diff = (merged(input_ids=ids).logits - adapter(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_a_merged_multi_head_export_is_backbone_plus_heads(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from nlpkit.apps.export import export

    re_file = str(_re_file(tmp_path))  # relation markers: added tokens, whose trained rows are merged too
    train_run(tmp_path, decoder_folder(models, "gpt2"), [{"type": "sentiment", "options": {"max_length": 64}},
                                                       {"type": "ner", "options": {"max_length": 64}},
                                                       {"type": "relation-extraction", "data": {"train": re_file,
                                                                                                "dev": re_file}}],
              peft={"method": "lora"})
    result = export(tmp_path / "run", "transformers", tmp_path / "out", merge=True)
    assert set(result.written) == {"sentiment", "ner", "relation-extraction"}
    assert all(result.max_diff[f"{t} (merge)"] <= 1e-4 for t in ("sentiment", "ner", "relation-extraction"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "backbone")
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (tmp_path / "out" / "heads.safetensors").is_file()


def test_lora_on_an_encoder_over_a_loadable_base_and_on_a_preset(models, tmp_path):
    bert = bert_folder(models)
    enc = train_run(tmp_path / "bert", bert, [{"type": "relation-extraction",
                                               "data": {"train": str(_re_file(tmp_path)), "dev": str(_re_file(tmp_path))}}],
                    peft={"method": "lora"})
    assert enc.backbone.peft.storage == "adapter" and enc.backbone.peft.trained_tokens
    loaded = nlpkit.load(tmp_path / "bert" / "run")
    items = INPUTS["relation-extraction"]
    assert loaded.predict(items) == in_memory(enc).predict(items)
    preset = train_run(tmp_path / "mini", "mini", [{"type": "ner"}], peft={"method": "dora", "r": 4})
    assert preset.backbone.peft.storage == "full"  # a preset's random base exists nowhere else
    again = nlpkit.load(tmp_path / "mini" / "run")
    assert again.predict(["Angela Merkel visited Paris ."]) == in_memory(preset).predict(["Angela Merkel visited Paris ."])


def _re_file(tmp: Path) -> Path:
    path = tmp / "re.txt"
    path.write_text("".join(f'{i + 1}\t"{s}"\n{lab}\nComment:\n\n' for i, (s, lab) in enumerate(RE_SAMPLES * 4)))
    return path


def test_a_lora_run_resumes_exactly(models, tmp_path):
    spec = decoder_folder(models, "qwen2")
    tasks = [{"type": "sentiment", "options": {"max_length": 64}}]
    whole = train_run(tmp_path / "whole", spec, tasks, peft={"method": "lora"}, steps=6, save_every=3, keep_last=3)
    part = tmp_path / "part"
    import shutil

    shutil.copytree(tmp_path / "whole" / "run" / "checkpoints" / "step-3", part / "run" / "checkpoints" / "step-3")
    resumed = train_run(part, spec, tasks, peft={"method": "lora"}, steps=6, save_every=3, keep_last=3)
    assert resumed.state.step == 6
    a = {k: v for k, v in whole.raw_model.state_dict().items() if "lora_" in k or k.startswith("heads.")}
    b = dict(resumed.raw_model.state_dict())
    assert a and all(torch.equal(a[k], b[k]) for k in a)


def test_half_precision_weights_load_and_train(models, tmp_path):
    trainer = train_run(tmp_path, decoder_folder(models, "llama"), [{"type": "sentiment", "options": {"max_length": 64}}],
                        peft={"method": "lora"})
    assert trainer.backbone.model.dtype == torch.float32  # auto on CPU: float32
    config = {"tasks": [{"type": "sentiment", "options": {"max_length": 64}}], "output_dir": str(tmp_path / "bf16"),
              "backbone": {"spec": decoder_folder(models, "llama"), "dtype": "bfloat16", "peft": {"method": "lora"}},
              "trainer": {"max_steps": 2, "batch_size": 4},
              "logging": {"progress": False, "plots": False, "tensorboard": False},
              "precision": {"compute": "fp32"}}
    t = Trainer(RunConfig.from_dict(config))
    t.run()
    base = [p for n, p in t.raw_model.backbone.model.named_parameters() if "lora_" not in n]
    assert base and all(p.dtype == torch.bfloat16 for p in base)
    assert nlpkit.load(tmp_path / "bf16").predict(["a fine film"])[0]["label"] in ("positive", "negative")


def test_the_cli_peft_flag_and_the_log_line(models, tmp_path, capsys):
    from nlpkit.apps.cli import main

    rc = main(["train", "--task", "sentiment", "--backbone", decoder_folder(models, "gpt2"), "--peft", "lora",
               "--max-steps", "2", "--batch-size", "4", "--option", "max_length=64", "--output-dir",
               str(tmp_path / "run"), "--set", "logging.plots=false", "--set", "backbone.peft.r=2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "peft: lora r=2" in out and "c_attn" in out  # peft's default target for GPT-2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["backbone"]["peft"]["method"] == "lora" and saved["backbone"]["peft"]["r"] == 2


def test_a_max_length_beyond_the_backbone_positions_is_cut_to_them_and_said(models, tmp_path, capsys):
    config = {"tasks": [{"type": "sentiment", "options": {"max_length": 1024}}], "output_dir": str(tmp_path / "run"),
              "backbone": {"spec": decoder_folder(models, "gpt2")},
              "trainer": {"max_steps": 1},
              "logging": {"progress": False, "plots": False}}
    nlpkit.train(config)
    assert "max_length=1024 is more than the 512 positions" in capsys.readouterr().out
    pipe = nlpkit.load(tmp_path / "run")
    assert pipe.task().options.max_length == 512
    assert pipe.predict("word " * 2000)["label"]  # a long input is cut, not an index error


def test_a_gguf_path_splits_into_its_folder_and_file_also_when_the_file_is_named_again(tmp_path):
    from nlpkit.engine.backbone import resolve_source
    from nlpkit.sdk.errors import BackboneError

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_source(str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")
    assert resolve_source(str(tmp_path / "m.gguf"), "m.gguf") == (str(tmp_path), "m.gguf")  # a checkpoint's record
    with pytest.raises(BackboneError, match="give one of them"):
        resolve_source(str(tmp_path / "m.gguf"), "other.gguf")
    assert resolve_source(str(tmp_path), "m.gguf") == (str(tmp_path), "m.gguf")
