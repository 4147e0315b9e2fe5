"""The causal-lm task and decoder-only backbones: tiny random Llama / GPT-2 / Qwen2 models built here, offline."""
from __future__ import annotations

import json
import math

import pytest
import torch

import nlpkit
from nlpkit.engine.backbone import PRESETS, Backbone, backbone_kind, train_tokenizer
from nlpkit.sdk.errors import ConfigError
from nlpkit_tasks.causal_lm import CausalLmTask

TEXT = ["the cat sat on the mat", "a dog barked at the moon all night long", "birds sing in the morning",
        "rain fell on the quiet town", "the end of the story came soon"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPKIT_CACHE", str(tmp_path / "cache"))  # file corpora are tokenised into a cache


def gpt2_style_tokenizer(texts=TEXT * 10, vocab=300, bos=True):
    """A byte-level BPE tokenizer as GPT-2 / Qwen ship them: an end-of-text token and NO pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    special = {"eos_token": "<|endoftext|>", **({"bos_token": "<|endoftext|>"} if bos else {})}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def tiny_model(kind: str, tokenizer, **extra):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    eos = tokenizer.eos_token_id
    if kind == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                            bos_token_id=eos, eos_token_id=eos, **extra)
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
        config = cls(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, **extra)
    return AutoModelForCausalLM.from_config(config)


def decoder_backbone(kind: str = "llama", **extra) -> Backbone:
    tokenizer = gpt2_style_tokenizer()
    return Backbone(tiny_model(kind, tokenizer, **extra).eval(), tokenizer, f"tiny-{kind}")


def saved_folder(tmp_path, kind: str) -> str:
    tokenizer = gpt2_style_tokenizer()
    folder = tmp_path / kind
    tiny_model(kind, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def ready_task(backbone: Backbone, **options) -> CausalLmTask:
    task = CausalLmTask(options={"max_length": 16, **options})
    task.setup(backbone)
    return task


def corpus_files(tmp_path, train=TEXT * 8, dev=TEXT):
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "dev.txt").write_text("\n".join(dev) + "\n")
    return {"train": str(tmp_path / "train.txt"), "dev": str(tmp_path / "dev.txt")}


def run_config(tmp_path, backbone, data, steps=4, **options):
    return {"tasks": [{"type": "causal-lm", "data": data, "options": {"max_length": 32, **options}}],
            "backbone": backbone,
            "trainer": {"max_steps": steps, "batch_size": 4},
            "logging": {"progress": False, "log_every": 2},
            "output_dir": str(tmp_path / "run")}


# ---- backbones -----------------------------------------------------------------------------------------
def test_decoder_configs_built_in_code_are_decoders():
    from transformers import BertConfig, GPT2Config, LlamaConfig, Qwen2Config, T5Config

    for config in (GPT2Config(), LlamaConfig(), Qwen2Config()):
        assert not config.architectures and backbone_kind(config) == "decoder", config.model_type
    assert backbone_kind(BertConfig()) == "encoder"  # BERT has a causal-LM class too, but is an encoder
    assert backbone_kind(BertConfig(is_decoder=True)) == "decoder"
    assert backbone_kind(T5Config()) == "encoder-decoder"


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_a_pretrained_decoder_folder_loads_with_its_lm_head_and_gets_a_pad_token(tmp_path, kind):
    folder = saved_folder(tmp_path, kind)
    backbone = Backbone.from_pretrained(folder)
    assert backbone.kind == "decoder"
    assert backbone.model.get_output_embeddings() is not None  # AutoModelForCausalLM, not AutoModel
    tok = backbone.tokenizer
    assert tok.pad_token_id == tok.eos_token_id is not None  # no new embedding row for a pretrained model
    assert backbone.model.config.pad_token_id == tok.pad_token_id
    assert backbone.model.generation_config.pad_token_id == tok.pad_token_id
    assert len(tok) == backbone.model.get_input_embeddings().num_embeddings
    hidden = backbone.encode(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long))
    assert hidden.shape == (1, 3, 32)  # encode: the decoder stack's last hidden states, not logits


def test_a_decoder_without_eos_or_pad_gets_a_new_pad_token():
    tokenizer = gpt2_style_tokenizer()
    model = tiny_model("llama", tokenizer)
    tokenizer.eos_token = tokenizer.bos_token = None
    size = len(tokenizer)
    backbone = Backbone(model, tokenizer, "x")
    assert tokenizer.pad_token == "[PAD]" and len(tokenizer) == size + 1
    assert backbone.model.get_input_embeddings().num_embeddings == size + 1
    assert backbone.model.config.pad_token_id == tokenizer.pad_token_id


def test_decoder_presets_sit_beside_the_bert_presets():
    texts = TEXT * 5
    decoder = Backbone.create("tiny-decoder", texts, vocab_size=300)
    cfg = decoder.model.config
    assert (decoder.kind, cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.intermediate_size, cfg.tie_word_embeddings) == ("decoder", "llama", 256, 4, 4, 1024, True)
    assert decoder.model.get_output_embeddings().weight is decoder.model.get_input_embeddings().weight
    assert PRESETS["tiny-decoder"]["vocab_size"] == 8000
    encoder = Backbone.create("mini", texts, vocab_size=300)  # the BERT presets as before
    assert (encoder.kind, encoder.model.config.model_type) == ("encoder", "bert")
    preset = {k: v for k, v in PRESETS["mini"].items() if k != "vocab_size"}  # how tests and the trainer call it
    assert Backbone.from_scratch(preset, train_tokenizer(texts, 300), "mini").kind == "encoder"


# ---- the loss --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_loss_is_transformers_own_next_token_loss(kind):
    backbone = decoder_backbone(kind)
    task = ready_task(backbone)
    head = task.build_head(backbone)
    ids = torch.randint(0, len(backbone.tokenizer), (3, 12))
    batch = task.collate([{"input_ids": row.numpy(), "example_index": 0} for row in ids])
    assert torch.equal(batch["labels"], ids)  # no padding: every token is a target
    ours = head(backbone, batch)["loss"]
    theirs = backbone.model(input_ids=ids, labels=ids).loss
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    unshifted = torch.nn.functional.cross_entropy(backbone.model(input_ids=ids).logits.flatten(0, 1), ids.flatten())
    assert not torch.allclose(ours, unshifted, atol=1e-3)  # a missing shift would be caught


def test_padding_is_never_a_target_and_softcapped_logits_match_the_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = gpt2_style_tokenizer()
    config = AutoConfig.for_model("gemma3_text", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                  final_logit_softcapping=0.05, eos_token_id=tokenizer.eos_token_id)
    backbone = Backbone(AutoModelForCausalLM.from_config(config).eval(), tokenizer, "gemma")
    task = ready_task(backbone)
    rows = [torch.randint(1, len(tokenizer), (n,)) for n in (12, 7)]
    batch = task.collate([{"input_ids": r.numpy(), "example_index": 0} for r in rows])
    assert batch["labels"][1, 7:].eq(-100).all() and batch["attention_mask"][1].sum() == 7
    ours = task.build_head(backbone)(backbone, batch)["loss"]
    theirs = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"]).loss
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    stats = task.predict_batch(None, backbone, batch)
    assert [s["tokens"] for s in stats] == [11, 6]
    assert math.isclose(sum(s["nll"] for s in stats) / 17, ours.item(), rel_tol=1e-5)


def test_the_loss_goes_down_on_repeated_text():
    backbone = Backbone.create("mini-decoder", TEXT * 5, vocab_size=300)
    task = ready_task(backbone, max_length=32)
    head = task.build_head(backbone)
    batch = task.collate(list(task.encode([{"text": t} for t in TEXT * 4])))
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = head(backbone, batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ---- encoding, scoring -----------------------------------------------------------------------------------
def test_blocks_start_with_bos_and_respect_documents():
    backbone = decoder_backbone("llama")
    tok = backbone.tokenizer
    docs = [{"text": t} for t in TEXT]
    packed = ready_task(backbone, max_length=8).encode(docs)
    assert all(int(packed[i]["input_ids"][0]) == tok.bos_token_id for i in range(len(packed)))
    assert all(len(packed[i]["input_ids"]) == 8 for i in range(len(packed) - 1))  # packed: no padding
    inside = ready_task(backbone, max_length=8, within_document=True).encode(docs)
    for i in range(len(inside)):
        words = tok.decode(inside[i]["input_ids"][1:])
        assert words in TEXT[inside[i]["example_index"]]  # never a piece of two documents
    no_bos = gpt2_style_tokenizer(bos=False)
    qwen = Backbone(tiny_model("qwen2", no_bos), no_bos, "qwen")
    task = ready_task(qwen, max_length=8)
    assert task.strategy.prefix_ids == () and task.strategy.stop_ids == [no_bos.eos_token_id]


def test_predictions_are_per_document_and_scores_add_up():
    backbone = decoder_backbone("llama")
    task = ready_task(backbone, max_length=8)
    docs = [{"text": t} for t in TEXT]
    features = task.encode(docs)
    batch = task.collate([features[i] for i in range(len(features))])
    outputs = task.predict_batch(None, backbone, batch)
    predictions = task.decode(docs, features, outputs)
    assert len(predictions) == len(docs)
    json.dumps(predictions)
    total = sum(p["tokens"] for p in predictions)
    assert total == int(batch["attention_mask"].sum()) - len(features)  # every token but each block's first
    scores = task.score(predictions, docs)
    assert scores["tokens"] == total and 0 <= scores["accuracy"] <= 100
    assert math.isclose(scores["perplexity"], math.exp(scores["loss"]))
    assert scores["perplexity"] > 50  # a random model over a 300-token vocabulary
    assert task.score([{"nll": 0.0, "tokens": 0, "correct": 0}], docs[:1])["accuracy"] == 0.0


def test_a_block_longer_than_the_backbone_positions_is_refused():
    with pytest.raises(ConfigError, match="max_length: 256 tokens per block.*128 positions"):
        ready_task(decoder_backbone("gpt2"), max_length=256)


# ---- generation ------------------------------------------------------------------------------------------
def always(backbone: Backbone, token: int) -> None:
    """Make the LM head predict ``token`` at every step (a zero projection plus a one-hot bias)."""
    model = backbone.model
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token] = 10.0
    model.config.tie_word_embeddings = False
    model.set_output_embeddings(head)


def test_generation_stops_at_eos_and_reports_the_limit():
    backbone = decoder_backbone("llama")
    task = ready_task(backbone, max_new_tokens=5)
    prompts = [task.parse_input("the cat"), task.parse_input({"prompt": "a dog barked"})]

    def run():
        features = task.encode(prompts)
        outputs = task.predict_batch(None, backbone, task.collate(features))
        return task.decode(prompts, features, outputs)

    word = backbone.tokenizer.convert_tokens_to_ids("Ġsat") if "Ġsat" in backbone.tokenizer.get_vocab() else 40
    always(backbone, word)
    cut = run()
    assert [p["tokens"] for p in cut] == [5, 5] and all(p["at_limit"] for p in cut)
    assert task.format_prediction(cut[0]).startswith("the cat")
    always(backbone, backbone.tokenizer.eos_token_id)
    ended = run()
    assert [(p["text"], p["tokens"], p["at_limit"]) for p in ended] == [("", 0, False)] * 2


def test_batched_left_padded_generation_equals_one_prompt_at_a_time():
    backbone = decoder_backbone("gpt2")
    task = ready_task(backbone, max_new_tokens=6)
    prompts = [task.parse_input(p) for p in ("the cat sat on", "rain", "birds sing in the")]

    def generate(items):
        features = task.encode(items)
        batch = task.collate(features)
        return task.decode(items, features, task.predict_batch(None, backbone, batch))

    together = generate(prompts)
    assert together == [generate([p])[0] for p in prompts]
    assert all(p["tokens"] == 6 and isinstance(p["text"], str) for p in together)


# ---- through nlpkit.train / nlpkit.load --------------------------------------------------------------------
def test_tiny_decoder_trains_saves_reloads_and_predicts_the_same(tmp_path):
    data = corpus_files(tmp_path)
    result = nlpkit.train(run_config(tmp_path, {"spec": "tiny-decoder", "vocab_size": 400}, data, steps=6,
                                     max_new_tokens=8))
    recorded = result.metrics["tasks"]["causal-lm"]
    assert recorded["tokens"] > 0 and math.isfinite(recorded["perplexity"])
    first, again = nlpkit.load(result.output_dir), nlpkit.load(result.output_dir)
    assert first.model.backbone.kind == "decoder" and first.model.backbone.model.config.model_type == "llama"
    scores = first.evaluate(data["dev"])
    assert scores == pytest.approx(recorded, rel=1e-6)
    outputs = first.predict(["the cat", "rain fell on"])
    assert outputs == again.predict(["the cat", "rain fell on"])
    assert all(o["tokens"] <= 8 for o in outputs)


def test_a_pretrained_gpt2_folder_continues_pretraining(tmp_path):
    data = corpus_files(tmp_path)
    folder = saved_folder(tmp_path, "gpt2")
    result = nlpkit.train(run_config(tmp_path, {"spec": folder}, data, steps=4, max_new_tokens=4))
    pipe = nlpkit.load(result.output_dir)
    assert type(pipe.model.backbone.model).__name__ == "GPT2LMHeadModel"
    assert pipe.evaluate(data["dev"]) == pytest.approx(result.metrics["tasks"]["causal-lm"], rel=1e-6)
    assert pipe.predict("the cat") == nlpkit.load(result.output_dir).predict("the cat")


def test_an_encoder_task_on_a_decoder_and_causal_lm_on_an_encoder_are_refused(tmp_path):
    folder = saved_folder(tmp_path, "llama")
    data = corpus_files(tmp_path)
    masked = {"tasks": [{"type": "masked-lm", "data": data}], "backbone": {"spec": folder},
              "trainer": {"max_steps": 1},
              "logging": {"progress": False}, "output_dir": str(tmp_path / "s")}
    with pytest.raises(ConfigError, match=r"masked-lm.*needs a backbone of kind encoder, but.*is decoder"):
        nlpkit.train(masked)
    with pytest.raises(ConfigError, match=r"causal-lm.*needs a backbone of kind decoder.*is encoder"):
        nlpkit.train(run_config(tmp_path, {"spec": "mini", "vocab_size": 400}, data, steps=1))


def test_causal_lm_keeps_the_plugin_contract():
    from nlpkit.testing import check_task

    report = check_task(CausalLmTask, backbone="mini-decoder", options={"max_length": 32, "max_new_tokens": 4})
    assert report.passed, report.summary()  # read() returns the lazy TextCorpus itself
