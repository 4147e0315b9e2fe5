"""Tiny random decoder-only models of the architectures users fine-tune (Llama, Qwen2, Gemma3, GPT-2), saved
as local folders with a byte-level BPE tokenizer, so LLM code paths run offline in seconds."""
from __future__ import annotations

from pathlib import Path

KINDS = ("llama", "qwen2", "gemma3", "gpt2")

TEXT = ["Angela Merkel visited Paris in the spring .", "The team won the cup final after extra time .",
        "A man is walking his dog in the park .", "Shares fell sharply on Wall Street on Monday .",
        "Tom went to the market to buy apples and bread ."]


def tokenizer(kind: str):
    """GPT-2 and Qwen ship no pad token (nlpkit must give them one); Llama and Gemma have BOS and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                           show_progress=False))
    if kind in ("gpt2", "qwen2"):
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def model(kind: str, tok, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512, **ids)
    elif kind == "gemma3":
        config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                  max_position_embeddings=512, sliding_window=64, **ids)
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
        config = cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, **ids)
    return AutoModelForCausalLM.from_config(config)


def decoder_folder(root: Path, kind: str, seed: int = 0) -> str:
    """A saved tiny ``kind`` model + tokenizer (the same tokenizer for a given kind, weights per seed)."""
    folder = Path(root) / f"{kind}-{seed}"
    if not (folder / "config.json").is_file():
        tok = tokenizer(kind)
        model(kind, tok, seed).save_pretrained(folder)
        tok.save_pretrained(folder)
    return str(folder)


def bert_folder(root: Path) -> str:
    """A tiny random BERT encoder with a WordPiece vocabulary (for --peft on an encoder over a loadable base)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(root) / "bert"
    if not (folder / "config.json").is_file():
        words = sorted({w.lower() for line in TEXT for w in line.split()} | {"<e1>", "</e1>"})
        vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words,
                                              *"abcdefghijklmnopqrstuvwxyz.,"])}
        tok = BertTokenizerFast(vocab=vocab)
        config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=512)
        BertModel(config, add_pooling_layer=False).save_pretrained(folder)
        tok.save_pretrained(folder)
    return str(folder)
