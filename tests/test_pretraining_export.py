"""`nlpkit export --format transformers` of pretraining runs: a masked-lm run on a BERT backbone becomes a
BertForMaskedLM (fill-mask pipeline), a causal-lm run its decoder (text-generation pipeline), each checked
against nlpkit's own logits at every position; a masked-lm head on another encoder falls back to backbone +
heads, and a model that does not reproduce its head is refused by the check."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import nlpkit
from nlpkit.apps.cli import main

WORDS = ("the river runs past old mills where millers ground wheat into flour while children watched "
         "boats drift slowly toward the harbour under grey northern skies").split()
TRAINER = {"batch_size": 8}
QUIET = {"progress": False, "tensorboard": False, "plots": False}


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("corpus")
    lines = sentences(120)
    (folder / "train.txt").write_text("\n".join(lines[:100]) + "\n")
    (folder / "dev.txt").write_text("\n".join(lines[100:]) + "\n")
    return {"train": str(folder / "train.txt"), "dev": str(folder / "dev.txt")}


def train(folder: Path, task: str, backbone: dict, corpus: dict, steps: int = 4, lr: float = 3e-3,
          **options) -> Path:
    nlpkit.train({"tasks": [{"type": task, "data": corpus, "options": {"max_length": 32, **options}}],
                  "backbone": backbone, "trainer": {**TRAINER, "max_steps": steps, "eval_every": steps, "lr": lr},
                  "logging": QUIET, "output_dir": str(folder)})
    return folder


def export(run: Path, out: Path) -> dict:
    assert main(["export", str(run), str(out), "--format", "transformers"]) == 0
    return json.loads((out / "nlpkit_export.json").read_text())


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, corpus) -> Path:
    return train(tmp_path_factory.mktemp("mlm") / "run", "masked-lm", {"spec": "mini", "vocab_size": 300}, corpus)


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory, corpus) -> Path:
    # a low learning rate keeps the decoder near its random start, whose greedy continuations differ from
    # prompt to prompt (a few steps at 3e-3 write the same frequent tokens after every prompt)
    return train(tmp_path_factory.mktemp("clm") / "run", "causal-lm", {"spec": "mini-decoder", "vocab_size": 300},
                 corpus, lr=1e-5, max_new_tokens=6)


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, corpus) -> Path:
    """Continued pretraining of a GPT-2 folder: its tokenizer adds no BOS, which nlpkit puts before a prompt."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_causal_lm import gpt2_style_tokenizer, tiny_model

    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = gpt2_style_tokenizer(sentences(100))
    torch.manual_seed(0)
    tiny_model("gpt2", tokenizer).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return train(folder / "run", "causal-lm", {"spec": str(folder / "model")}, corpus, steps=1, lr=1e-5,
                 max_new_tokens=6)


# ---- masked-lm ------------------------------------------------------------------------------------------
def test_masked_lm_exports_as_bert_for_masked_lm_with_the_same_logits(mlm_run, tmp_path):
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    out = tmp_path / "out"
    info = export(mlm_run, out)
    assert info["written"] == {"masked-lm": "AutoModelForMaskedLM"} and info["max_diff"]["masked-lm"] <= 1e-4
    assert not (out / "heads.safetensors").exists()

    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(model) is BertForMaskedLM
    # the decoder is the word embedding matrix (tied), not a second copy
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    pipe = nlpkit.load(mlm_run, device="cpu")
    backbone, head = pipe.model.backbone, pipe.model.heads["masked-lm"]
    enc = backbone.tokenizer(sentences(3, seed=5) + ["the river[MASK] past old[MASK]"], padding=True,
                             return_tensors="pt")
    with torch.inference_mode():
        ours = head.logits(backbone, backbone.encode(enc["input_ids"], enc["attention_mask"]))
        theirs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    real = enc["attention_mask"].bool()
    assert ours.shape == theirs.shape and real.sum() < real.numel()  # some padding in the batch
    assert (ours[real] - theirs[real]).abs().max() <= 1e-4

    card = (out / "README.md").read_text()
    assert "AutoModelForMaskedLM" in card and 'pipeline("fill-mask", model=OUT)' in card
    assert "masked-lm" in card and "dev metrics" in card


def test_the_fill_mask_pipeline_ranks_tokens_as_nlpkit_predict(mlm_run, tmp_path):
    from transformers import pipeline

    out = tmp_path / "out"
    export(mlm_run, out)
    pipe = nlpkit.load(mlm_run, device="cpu")
    # the mask stands for a whole token with its leading space (byte-level BPE): nlpkit and the exported
    # tokenizer both give the space before it to the mask, so the pipeline sees nlpkit's token ids
    text = "the river [MASK] past old mills"
    task = pipe.task("masked-lm")
    fill = pipeline("fill-mask", model=str(out), device="cpu", top_k=40)
    assert fill.tokenizer(text)["input_ids"] == task.encode([task.parse_input(text)])[0]["input_ids"]
    assert pipe.model.backbone.tokenizer(text)["input_ids"] != fill.tokenizer(text)["input_ids"]  # a lone space
    ours = [o["id"] for o in pipe.predict(text)["masks"][0]]
    special = set(fill.tokenizer.all_special_ids)
    theirs = [r["token"] for r in fill(text) if r["token"] not in special]  # nlpkit never proposes specials
    assert theirs[:len(ours)] == ours


def test_a_continued_pretraining_of_a_wordpiece_bert_folder_exports_too(tmp_path, corpus):
    """The MiniLM case: a pretrained BERT folder with a WordPiece tokenizer (here with its own MLM head)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast, pipeline

    words = sorted(set(WORDS))
    chars = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
                               + words))
    folder = tmp_path / "bert"
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    run = train(tmp_path / "run", "masked-lm", {"spec": str(folder)}, corpus, steps=2, lr=1e-3)
    info = export(run, tmp_path / "out")
    assert info["written"] == {"masked-lm": "AutoModelForMaskedLM"} and info["max_diff"]["masked-lm"] <= 1e-4
    pipe = nlpkit.load(run, device="cpu")
    fill = pipeline("fill-mask", model=str(tmp_path / "out"), device="cpu", top_k=len(vocab))
    text = "the river [MASK] past old mills"
    special = set(fill.tokenizer.all_special_ids)
    ours = [o["id"] for o in pipe.predict(text)["masks"][0]]
    assert [r["token"] for r in fill(text) if r["token"] not in special][:len(ours)] == ours


# ---- causal-lm ------------------------------------------------------------------------------------------
def test_causal_lm_exports_its_decoder_with_the_same_perplexity(clm_run, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    info = export(clm_run, out)
    assert info["written"] == {"causal-lm": "AutoModelForCausalLM"} and info["max_diff"]["causal-lm"] <= 1e-4
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.model_type == "llama"
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    pipe = nlpkit.load(clm_run, device="cpu")
    task, backbone = pipe.task("causal-lm"), pipe.model.backbone
    blocks = task.encode(task.read(corpus["dev"]))
    batch = task.collate([blocks[i] for i in range(len(blocks))])
    with torch.inference_mode():
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        ours = backbone.lm_logits(backbone.encode(batch["input_ids"], batch["attention_mask"]))
    real = batch["attention_mask"].bool()
    assert (ours[real] - hf.logits[real]).abs().max() <= 1e-4
    # transformers' own loss over the dev blocks is nlpkit's dev perplexity
    assert math.exp(hf.loss.item()) == pytest.approx(pipe.evaluate(corpus["dev"])["perplexity"], rel=1e-4)

    card = (out / "README.md").read_text()
    assert 'pipeline("text-generation", model=OUT)' in card and "causal-lm" in card


@pytest.mark.parametrize("run", ["clm_run", "gpt2_run"])
def test_the_text_generation_pipeline_continues_prompts_as_nlpkit_predict(run, tmp_path, request):
    """The exported tokenizer frames a prompt as predict does (BOS, nothing after it: not the [CLS] ... [SEP]
    of a from-scratch tokenizer, not GPT-2's bare text), and the generation config is predict's."""
    from transformers import pipeline

    run = request.getfixturevalue(run)
    out = tmp_path / "out"
    export(run, out)
    pipe = nlpkit.load(run, device="cpu")
    task = pipe.task("causal-lm")
    generate = pipeline("text-generation", model=str(out), device="cpu")
    assert generate.model.generation_config.max_new_tokens == 6 and not generate.model.generation_config.do_sample
    prompts = ["the river", "boats drift slowly toward", "wheat"]
    texts = []
    for prompt in prompts:
        assert generate.tokenizer(prompt)["input_ids"] == task.encode([task.parse_input(prompt)])[0]["input_ids"]
        ours = pipe.predict(prompt)
        theirs = generate(prompt, return_full_text=False)[0]["generated_text"]
        assert theirs == ours["text"], prompt
        texts.append(theirs)
    assert len(set(texts)) > 1 and all(t.strip() for t in texts)  # real continuations, not one empty string


# ---- what does not export as a standard model -----------------------------------------------------------
def test_a_model_that_does_not_reproduce_the_head_is_refused(mlm_run, tmp_path, monkeypatch):
    """The check is real: one output bias off by 1e-3 fails it, and the export falls back with the reason."""
    from nlpkit_tasks import masked_lm

    build = masked_lm.bert_for_masked_lm

    def off_by_a_little(backbone, head):
        model, name = build(backbone, head)
        with torch.no_grad():
            model.cls.predictions.bias[7] += 1e-3
        return model, name

    monkeypatch.setattr(masked_lm, "bert_for_masked_lm", off_by_a_little)
    info = export(mlm_run, tmp_path / "out")
    assert info["written"] == {"masked-lm": "backbone + heads (safetensors)"}
    assert "does not reproduce its head" in info["notes"]["masked-lm"]
    assert "largest difference 0.001 > 0.0001" in info["notes"]["masked-lm"]
    assert (tmp_path / "out" / "heads.safetensors").is_file()


def test_masked_lm_on_another_encoder_falls_back_to_backbone_and_heads(tmp_path, corpus):
    """A RoBERTa encoder: no BertForMaskedLM to hold it, so the backbone folder + head tensors, as before."""
    from safetensors.torch import load_file
    from transformers import RobertaConfig, RobertaModel

    from nlpkit.engine.backbone import train_tokenizer

    tokenizer = train_tokenizer(sentences(100), 300)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path / "roberta"
    RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run = train(tmp_path / "run", "masked-lm", {"spec": str(folder)}, corpus, steps=1)
    info = export(run, tmp_path / "out")
    assert info["written"] == {"masked-lm": "backbone + heads (safetensors)"}
    assert "MaskedLmHead" in info["notes"]["masked-lm"]
    heads = load_file(tmp_path / "out" / "heads.safetensors")
    assert {"masked-lm.dense.weight", "masked-lm.bias"} <= set(heads)
    assert (tmp_path / "out" / "backbone" / "config.json").is_file()


def test_the_activation_of_the_backbone_goes_into_the_export(tmp_path):
    """BERT's MLM transform uses config.hidden_act, as nlpkit's head does: a relu backbone exports exactly."""
    from nlpkit_tasks.masked_lm import MaskedLmTask
    from transformers import BertConfig, BertModel

    from nlpkit.engine.backbone import Backbone, train_tokenizer
    from nlpkit.apps.export.transformers import _compare_logits

    tokenizer = train_tokenizer(sentences(100), 300)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_act="relu", layer_norm_eps=1e-5)
    backbone = Backbone(BertModel(config, add_pooling_layer=False).eval(), tokenizer, "relu-bert")
    task = MaskedLmTask(options={"max_length": 32})
    task.setup(backbone)
    head = task.build_head(backbone).eval()
    with torch.no_grad():  # a trained-looking head: nothing left at its zero / identity initialisation
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model, name = task.export_model(backbone, head)
    assert name == "AutoModelForMaskedLM" and model.config.hidden_act == "relu"
    assert _compare_logits(task, backbone, head, model.eval()) <= 1e-4
    model.config.hidden_act = "gelu"  # the same weights through another activation: the check must see it
    model.cls.predictions.transform.transform_act_fn = torch.nn.GELU()
    assert _compare_logits(task, backbone, head, model) > 1e-3


def test_onnx_export_of_a_masked_lm_run_is_refused_with_the_reason(mlm_run, tmp_path):
    """The masking head draws masks inside forward: not one graph of its inputs. A clear error, no traceback."""
    pytest.importorskip("onnxruntime")
    from nlpkit.sdk.errors import ConfigError
    from nlpkit.apps.export import export as run_export

    with pytest.raises(ConfigError, match="nothing to export as ONNX: masked-lm: its head does not run"):
        run_export(mlm_run, "onnx", tmp_path / "onnx")
