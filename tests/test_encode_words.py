"""nlpkit.sdk.data.encode_words reads a fast tokenizer's Rust encodings directly; it must give exactly what the
tokenizer's own ``__call__`` gives (ids and word ids), for every kind of tokenizer a word-level task meets."""
import random

import pytest

from nlpkit.engine.backbone import train_tokenizer
from nlpkit.sdk.data import _plain_fast_tokenizer, encode_words

from llm_models import TEXT, tokenizer as bpe_tokenizer


def wordpiece():
    from transformers import BertTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyzäöü.,-'")
    words = sorted({w.lower() for line in TEXT for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *words]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))}, do_lower_case=True)


TOKENIZERS = {
    "wordpiece": wordpiece,
    "bpe-from-scratch": lambda: train_tokenizer(TEXT * 5, vocab_size=300),
    "byte-level-llama": lambda: bpe_tokenizer("llama"),
    "byte-level-gpt2": lambda: bpe_tokenizer("gpt2"),
}


def sentences(seed: int, n: int = 200) -> list[list[str]]:
    """Words a CoNLL file holds: known and unknown, accented, punctuation, very long words, [SEP] as a word,
    and sentences long enough to be cut."""
    rng = random.Random(seed)
    pool = [w for line in TEXT for w in line.split()] + ["Müller", "naïve", "e-mail", "O'Neil", "1,000.5",
                                                          "[SEP]", "<s>", "x" * 60, "東京", "🙂", "--"]
    return [[rng.choice(pool) for _ in range(rng.choice([1, 2, 5, 12, 40, 90]))] for _ in range(n)]


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@pytest.mark.parametrize("max_length", [8, 16, 512])
def test_encode_words_equals_the_tokenizers_call(kind, max_length):
    tok = TOKENIZERS[kind]()
    assert _plain_fast_tokenizer(tok)  # the direct path is the one under test
    words = sentences(seed=max_length)
    ids, word_ids = encode_words(tok, words, max_length)
    enc = tok(words, is_split_into_words=True, truncation=True, max_length=max_length,
              return_attention_mask=False, return_token_type_ids=False)
    assert ids == enc["input_ids"]
    assert word_ids == [enc.word_ids(i) for i in range(len(words))]
    assert max(map(len, ids)) <= max_length
    if max_length == 8:
        assert any(len(s) > 8 for s in words)  # some were cut


def test_a_call_in_between_with_other_settings_does_not_leak_into_encode_words():
    """The tokenizer's truncation is shared state: a padded, untruncated call before must not change ours."""
    tok = wordpiece()
    words = sentences(seed=1, n=50)
    first = encode_words(tok, words, 8)
    tok(["a long sentence of many words that goes on"] * 3, padding="max_length", max_length=64)
    tok(words[:3], is_split_into_words=True)  # no truncation
    assert encode_words(tok, words, 8) == first


def test_a_tokenizer_that_encodes_its_own_way_goes_through_its_call():
    class Wrapped:
        """Not a transformers fast tokenizer: only __call__ is known."""

        def __init__(self):
            self.inner, self.calls = wordpiece(), 0

        def __call__(self, *args, **kwargs):
            self.calls += 1
            return self.inner(*args, **kwargs)

    tok = Wrapped()
    words = sentences(seed=2, n=20)
    assert not _plain_fast_tokenizer(tok)
    assert encode_words(tok, words, 16) == encode_words(tok.inner, words, 16)
    assert tok.calls == 1
