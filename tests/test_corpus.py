"""The corpus layer of the pretraining tasks: lazy documents, a token cache on disk, packed blocks."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from nlpkit.engine.backbone import train_tokenizer
from nlpkit.sdk.corpus import TextCorpus, TokenCache, pack, read_corpus
from nlpkit.sdk.data import carve_dev_split
from nlpkit.sdk.errors import DataError
from nlpkit.engine.task_data import data_fingerprint

TEXT = ["the cat sat on the mat", "a dog barked at the moon all night", "birds sing", "rain fell on the town",
        "the end of the story came soon"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT * 20, 300)


def write(path, text):
    path.write_text(text)
    return path


def test_line_documents_and_paragraphs(tmp_path):
    lines = write(tmp_path / "lines.txt", "one\n\ntwo\nthree\n")  # one blank line only before the first text
    assert [d["text"] for d in read_corpus(lines, "line")] == ["one", "two", "three"]
    assert [d["text"] for d in read_corpus(lines, "blank-line")] == ["one", "two\nthree"]
    assert [d["text"] for d in read_corpus(lines)] == ["one", "two\nthree"]  # auto: a blank line between texts
    flat = write(tmp_path / "flat.txt", "one\ntwo\n\n")
    assert [d["text"] for d in read_corpus(flat)] == ["one", "two"]  # auto: no paragraphs, one per line
    corpus = read_corpus(lines, "line")
    assert corpus[2] == {"text": "three", "line": 4, "file": str(lines)}
    assert corpus[-1]["text"] == "three"


def test_jsonl_gzip_and_folders(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write(folder / "b.jsonl", json.dumps({"text": "from json", "id": 1}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    with gzip.open(folder / "a.txt.gz", "wt") as f:
        f.write("zipped one\nzipped two\n")
    write(folder / "notes.md", "not read\n")
    corpus = read_corpus(folder)
    assert [d["text"] for d in corpus] == ["zipped one", "zipped two", "from json", "second"]
    assert corpus[3]["line"] == 3 and corpus[3]["file"].endswith("b.jsonl")


def test_bad_inputs_name_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.jsonl", json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl.*2.*'text'"):
        read_corpus(bad)
    with pytest.raises(DataError, match="no documents"):
        read_corpus(write(tmp_path / "empty.txt", "\n\n"))
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no .txt"):
        read_corpus(tmp_path / "none")
    with pytest.raises(DataError, match="not found"):
        read_corpus(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_corpus(latin)
    assert read_corpus(latin, encoding="latin-1")[0]["text"] == "café"


def test_fingerprint_follows_the_files_and_subsets(tmp_path):
    path = write(tmp_path / "c.txt", "\n".join(TEXT) + "\n")
    corpus = read_corpus(path)
    assert data_fingerprint(corpus) == corpus.fingerprint()
    train, dev = carve_dev_split(corpus, 0.4, 0)
    assert isinstance(train, TextCorpus) and (len(train), len(dev)) == (3, 2)
    assert sorted(d["text"] for d in list(train) + list(dev)) == sorted(TEXT)
    assert len({corpus.fingerprint(), train.fingerprint(), dev.fingerprint()}) == 3
    before = corpus.fingerprint()
    os.utime(path, ns=(1, 1))
    assert read_corpus(path).fingerprint() != before


def stream(blocks, prefix=1, suffix=1):
    return [int(t) for b in blocks for t in b["input_ids"][prefix:len(b["input_ids"]) - suffix]]


def test_packed_blocks_cover_the_stream_once(tmp_path, tokenizer):
    corpus = read_corpus(write(tmp_path / "c.txt", "\n".join(TEXT) + "\n"))
    blocks = pack(corpus, tokenizer, 8, prefix_ids=(tokenizer.cls_token_id,), suffix_ids=(tokenizer.sep_token_id,),
                  cache_dir=tmp_path / "cache")
    sep = tokenizer.sep_token_id
    expected = []
    for text in TEXT:
        expected += tokenizer(text, add_special_tokens=False)["input_ids"] + [sep]
    assert stream(blocks) == expected
    assert all(len(b["input_ids"]) == 8 for b in list(blocks)[:-1])  # packed: only the last block is short
    assert list(blocks.lengths()) == [len(b["input_ids"]) for b in blocks]
    assert blocks.num_tokens == sum(blocks.lengths())
    assert all(b["input_ids"][0] == tokenizer.cls_token_id and b["input_ids"][-1] == sep for b in blocks)
    # the document each block starts in
    starts = np.cumsum([0] + [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in TEXT])
    for i, b in enumerate(blocks):
        assert starts[b["example_index"]] <= i * 6 < starts[b["example_index"] + 1]


def test_blocks_within_documents(tmp_path, tokenizer):
    corpus = read_corpus(write(tmp_path / "c.txt", "\n".join(TEXT) + "\n"))
    blocks = pack(corpus, tokenizer, 6, within_document=True, cache_dir=tmp_path / "cache")
    for doc, text in enumerate(TEXT):
        mine = [b for b in blocks if b["example_index"] == doc]
        assert stream(mine, 0, 0) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.sep_token_id not in stream(blocks, 0, 0)


def test_cache_is_reused_and_keyed_by_tokenizer(tmp_path, tokenizer, monkeypatch):
    corpus = read_corpus(write(tmp_path / "c.txt", "\n".join(TEXT) + "\n"))
    first = pack(corpus, tokenizer, 16, cache_dir=tmp_path / "cache")
    assert isinstance(first.cache.tokens, np.memmap) and first.cache.tokens.dtype == np.uint16
    calls = []
    monkeypatch.setattr(TokenCache, "_write", classmethod(lambda cls, *a, **k: calls.append(a)))
    again = pack(corpus, tokenizer, 32, cache_dir=tmp_path / "cache")  # another block size: same cache
    assert calls == [] and again.cache.folder == first.cache.folder
    monkeypatch.undo()
    other = train_tokenizer(TEXT * 20, 280)
    third = pack(corpus, other, 16, cache_dir=tmp_path / "cache")
    assert third.cache.folder != first.cache.folder
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_interrupted_tokenisation_leaves_no_cache(tmp_path, tokenizer, monkeypatch):
    corpus = read_corpus(write(tmp_path / "c.txt", "\n".join(TEXT * 1000) + "\n"))
    texts = TextCorpus.texts

    def dies_halfway(self):
        for k, text in enumerate(texts(self)):
            if k == 3000:  # after the first chunk was written
                raise KeyboardInterrupt
            yield text

    monkeypatch.setattr(TextCorpus, "texts", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        pack(corpus, tokenizer, 16, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert pack(corpus, tokenizer, 16, cache_dir=tmp_path / "cache").cache.doc_starts.size == 5000


def test_word_starts(tmp_path, tokenizer):
    blocks = pack(TextCorpus.from_texts(["unbelievable catastrophe", "cat"]), tokenizer, 64, word_starts=True)
    enc = tokenizer("unbelievable catastrophe", add_special_tokens=False)
    words = enc.word_ids()
    expected = [i == 0 or words[i] != words[i - 1] for i in range(len(words))]
    block = blocks[0]
    assert list(block["word_start"][:len(words)]) == expected
    assert block["input_ids"].dtype == np.int64


def test_in_memory_corpora_and_plain_records(tokenizer):
    from_texts = pack(TextCorpus.from_texts(TEXT), tokenizer, 10)
    from_records = pack([{"text": t} for t in TEXT], tokenizer, 10)
    assert from_texts.cache.folder is None and stream(from_texts, 0, 0) == stream(from_records, 0, 0)
    assert TextCorpus.from_texts(TEXT)[1] == {"text": TEXT[1], "line": 2}
