"""The shared reader in nlpkit.sdk.data: one encoding policy for every data file and predict's stdin.

A byte-order mark decides the encoding and is stripped; otherwise strict UTF-8 (or the task option
``encoding``); the first bad byte, NUL bytes, fake or truncated gzip files are DataErrors that name the
file, the line and the byte; lines holding only a byte-order mark are skipped with one warning.
"""
import codecs
import gzip
import io
import logging
import re

import pytest

from nlpkit import ConfigError, DataError
from nlpkit.sdk.data import (check_encoding, csv_rows, open_text, read_jsonl, read_text_lines,
                         stream_lines)

TEXT = "EU B-ORG\nMüller B-PER\n\nz O\n"


def write(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def lines(path, **kw) -> list[str]:
    return [text for _, text in read_text_lines(path, **kw)]


@pytest.mark.parametrize("encoding,bom", [
    ("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
    ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", codecs.BOM_UTF32_BE),
])
def test_every_byte_order_mark_decides_the_encoding_and_is_stripped(tmp_path, encoding, bom):
    path = write(tmp_path, "a.conll", bom + TEXT.encode(encoding))
    assert lines(path) == ["EU B-ORG", "Müller B-PER", "", "z O"]
    with open_text(path) as f:
        assert f.read() == TEXT


def test_a_bom_wins_over_the_encoding_option(tmp_path):
    path = write(tmp_path, "a.txt", codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"))
    assert lines(path, encoding="latin-1")[1] == "Müller B-PER"


def test_utf8_bom_is_not_part_of_the_first_conll_token(tmp_path):
    from nlpkit_tasks.ner import read_conll

    path = write(tmp_path, "a.conll", codecs.BOM_UTF8 + b"EU B-ORG\nrejects O\n")
    assert read_conll(path)[0]["tokens"] == ["EU", "rejects"]


def test_latin1_fails_with_the_byte_offset_and_line(tmp_path):
    path = write(tmp_path, "a.conll", "EU B-ORG\nMüller B-PER\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        lines(path)
    err = info.value
    assert (err.path, err.line) == (path, 2)
    # "EU B-ORG\n" is 9 bytes; "M" is byte 9, the ü (0xFC) byte 10
    assert "not UTF-8 at byte 10 (line 2, byte 0xFC)" in str(err)
    assert "iconv -f latin1 -t utf-8" in str(err) and "--option encoding=latin-1" in str(err)
    assert str(err).startswith(f"{path}:2: ")


def test_latin1_reads_with_the_encoding_option(tmp_path):
    path = write(tmp_path, "a.conll", "EU B-ORG\nMüller B-PER\n".encode("latin-1"))
    assert lines(path, encoding="latin-1") == ["EU B-ORG", "Müller B-PER"]


def test_the_offset_counts_from_the_start_of_the_file_across_lines_and_crlf(tmp_path):
    data = b"a\r\nbb\r\n\r\nccc\xff\n"
    path = write(tmp_path, "a.txt", data)
    with pytest.raises(DataError, match=r":4: not UTF-8 at byte 12 \(line 4, byte 0xFF\)") as info:
        lines(path)
    assert data[12] == 0xFF and info.value.line == 4


def test_utf16_without_bom_is_reported_as_binary_with_a_hint(tmp_path):
    path = write(tmp_path, "a.conll", TEXT.encode("utf-16-le"))
    with pytest.raises(DataError, match=r":1: a NUL byte at byte 1 \(line 1\): this is a binary file") as info:
        lines(path)
    assert "--option encoding=utf-16" in str(info.value)
    assert lines(path, encoding="utf-16-le")[0] == "EU B-ORG"  # and the option reads it


def test_binary_file_is_reported_as_binary(tmp_path):
    path = write(tmp_path, "model.bin", bytes(range(256)) * 4)
    with pytest.raises(DataError, match="binary file"):
        lines(path)


def test_a_nul_byte_later_in_the_file_names_its_line(tmp_path):
    path = write(tmp_path, "a.txt", b"one\ntwo\nth\x00ree\n")
    with pytest.raises(DataError, match=r":3: a NUL byte at byte 10 \(line 3\)"):
        lines(path)


def test_gzip_is_read_by_name_and_by_magic_bytes(tmp_path):
    data = gzip.compress(TEXT.encode())
    assert lines(write(tmp_path, "a.conll.gz", data))[0] == "EU B-ORG"
    assert lines(write(tmp_path, "b.conll", data))[0] == "EU B-ORG"  # gzipped, but not named .gz


def test_truncated_gzip_is_a_data_error(tmp_path):
    data = gzip.compress(("EU B-ORG\n" * 5000 + "Paris B-LOC\n" * 5000).encode(), mtime=0)
    path = write(tmp_path, "a.conll.gz", data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated gzip file") as info:
        lines(path)
    assert info.value.path == path


def test_fake_gzip_is_a_data_error(tmp_path):
    path = write(tmp_path, "a.conll.gz", b"EU B-ORG\n")
    with pytest.raises(DataError, match="not a gzip file") as info:
        lines(path)
    assert info.value.path == path


def test_damaged_gzip_is_a_data_error(tmp_path):
    data = bytearray(gzip.compress(b"EU B-ORG\n" * 100))
    data[-6] ^= 0xFF  # the CRC
    with pytest.raises(DataError, match="damaged gzip file"):
        lines(write(tmp_path, "a.gz", bytes(data)))


def test_bom_only_lines_are_skipped_with_one_warning(tmp_path, caplog):
    bom = "\ufeff"
    path = write(tmp_path, "a.conll", f"EU B-ORG\n{bom}\nx O\n \t{bom}{bom} \r\n\ny O\n".encode())
    with caplog.at_level(logging.WARNING, logger="nlpkit.data"):
        numbered = list(read_text_lines(path))
    assert numbered == [(1, "EU B-ORG"), (3, "x O"), (5, ""), (6, "y O")]  # line numbers stay the file's
    warnings = [r.getMessage() for r in caplog.records if r.name == "nlpkit.data"]
    assert warnings == [f"{path}: skipped 2 line(s) holding only a byte-order mark (U+FEFF), first at line 2"]


def test_open_text_reads_bom_only_lines_as_blank_so_csv_line_numbers_hold(tmp_path, caplog):
    path = write(tmp_path, "a.csv", "text,label\n\ufeff\ngood,pos\n\"bad,\nvery\",neg\n".encode())
    with caplog.at_level(logging.WARNING, logger="nlpkit.data"), open_text(path) as f:
        rows = list(csv_rows(f, path))
    assert rows == [(1, ["text", "label"]), (2, []), (3, ["good", "pos"]), (4, ["bad,\nvery", "neg"])]
    assert len([r for r in caplog.records if r.name == "nlpkit.data"]) == 1


def test_a_bom_inside_a_line_is_text_not_skipped(tmp_path):
    path = write(tmp_path, "a.txt", "a\ufeffb\n".encode())
    assert lines(path) == ["a\ufeffb"]


def test_lone_carriage_returns_end_lines_as_a_text_file_would(tmp_path):
    path = write(tmp_path, "a.txt", b"a\rb\r\nc\n\rd")
    assert list(read_text_lines(path)) == [(1, "a"), (2, "b"), (3, "c"), (4, ""), (5, "d")]


def test_huge_csv_field_is_read(tmp_path):
    path = write(tmp_path, "a.csv", b'text,label\n"' + b"a" * 1_000_000 + b'",pos\n')
    with open_text(path) as f:
        rows = list(csv_rows(f, path))
    assert len(rows[1][1][0]) == 1_000_000


def test_malformed_csv_names_the_line(tmp_path):
    path = write(tmp_path, "a.csv", b'text,label\ngood,pos\n"unclosed,neg\n')
    with pytest.raises(DataError, match=r"a.csv:3: malformed CSV"), open_text(path) as f:
        list(csv_rows(f, path, strict=True))


def test_read_jsonl_names_the_line_of_bad_json_and_reports_non_objects(tmp_path):
    path = write(tmp_path, "a.jsonl", b'{"a": 1}\n\n{"a": \n')
    with pytest.raises(DataError, match=r"a.jsonl:3: invalid JSON"):
        list(read_jsonl(path))
    path = write(tmp_path, "b.jsonl", b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"b.jsonl:2: expected a JSON object per line"):
        list(read_jsonl(path))
    path = write(tmp_path, "c.jsonl", b"[" * 100_000 + b"\n")
    with pytest.raises(DataError, match=r"c.jsonl:1: "):
        list(read_jsonl(path))


def test_read_jsonl_honours_the_encoding(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"text": "café"}\n'.encode("cp1252"))
    with pytest.raises(DataError, match="not UTF-8 at byte 13"):
        list(read_jsonl(path))
    assert list(read_jsonl(path, encoding="cp1252")) == [(1, {"text": "café"})]


def test_missing_file_and_folder_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        lines(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="not a file"):
        lines(str(tmp_path))


def test_unknown_encoding_is_a_config_error_naming_the_key():
    assert check_encoding("latin1") == "iso8859-1"
    with pytest.raises(ConfigError, match=r"tasks.ner.options.encoding: unknown encoding 'klingon'"):
        check_encoding("klingon", "tasks.ner.options.encoding")


def test_the_task_option_encoding_is_validated_and_passed_to_the_readers(tmp_path):
    from nlpkit_tasks.ner import NerTask

    path = write(tmp_path, "a.conll", "Müller B-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        list(NerTask().read(path))
    assert list(NerTask(options={"encoding": "latin-1"}).read(path))[0]["tokens"] == ["Müller"]
    with pytest.raises(ConfigError, match="encoding"):
        NerTask(options={"encoding": "nope"})


def test_stream_lines_decodes_stdin_bytes_the_same_way():
    stdin = io.BytesIO(codecs.BOM_UTF16_LE + "héllo\n\ufeff\nworld\n".encode("utf-16-le"))
    assert list(stream_lines(stdin, "<stdin>")) == ["héllo", "world"]
    with pytest.raises(DataError, match=r"<stdin>:2: not UTF-8 at byte 3 \(line 2, byte 0xE9\).*--encoding latin-1"):
        list(stream_lines(io.BytesIO(b"ok\n\xe9t\xe9\n"), "<stdin>", hint="--encoding latin-1"))
    assert list(stream_lines(io.BytesIO(b"\xe9t\xe9\n"), "<stdin>", "latin-1")) == ["été"]
    with pytest.raises(DataError, match="gzip-compressed"):
        list(stream_lines(io.BytesIO(gzip.compress(b"hi\n")), "<stdin>"))


def test_recipe_in_utf16_with_bom_loads_and_latin1_is_a_clear_error(tmp_path):
    from nlpkit.engine.config import load_recipe

    path = tmp_path / "r.yaml"
    path.write_bytes(codecs.BOM_UTF16_LE + "description: café\ntasks: []\n".encode("utf-16-le"))
    assert load_recipe(path)["description"] == "café"
    path.write_bytes("description: café\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"r.yaml:1: not UTF-8 at byte 16 \(line 1, byte 0xE9\)") as info:
        load_recipe(path)
    assert "--option" not in str(info.value)  # a recipe has no encoding setting: only re-encoding helps


def test_bounded_pieces_keeps_short_texts_and_cuts_long_ones():
    from nlpkit.engine.backbone import bounded_pieces

    assert list(bounded_pieces(["short text", ""])) == ["short text", ""]
    pieces = list(bounded_pieces(["word " * 1000, "x" * 1000], size=100))
    assert "".join(pieces[:-10]) == "word " * 1000 and all(len(p) <= 100 for p in pieces)
    assert pieces[-10:] == ["x" * 100] * 10


def test_ner_warns_once_with_the_count_when_sentences_are_cut_at_max_length(caplog):
    from nlpkit.engine.backbone import train_tokenizer
    from nlpkit_tasks.ner import NerTask

    task = NerTask(options={"max_length": 8})
    task.tokenizer = train_tokenizer(["EU rejects German call to boycott British lamb"] * 5, vocab_size=300)
    task.labels = ["O"]
    long = {"tokens": "EU rejects German call to boycott British lamb again".split(), "line": 7}
    short = {"tokens": ["EU"], "line": 1}
    with caplog.at_level(logging.WARNING, logger="nlpkit.tasks.ner"):
        task.encode([short, long, dict(long, line=9)])
    warnings = [r.getMessage() for r in caplog.records if r.name == "nlpkit.tasks.ner"]
    assert len(warnings) == 1
    assert "2 of 3 sentence(s) longer than max_length=8 tokens were cut" in warnings[0]
    assert "(first at line 7)" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nlpkit.tasks.ner"):
        task.encode([short])
    assert not [r for r in caplog.records if r.name == "nlpkit.tasks.ner"]


@pytest.mark.parametrize("record,message", [
    ({"text": "good", "label": {"name": "pos"}}, "field 'label': a label must be a string or an integer, got a JSON object"),
    ({"text": "good", "label": 0.5}, "field 'label': a label must be a string or an integer, got a fractional number 0.5"),
    ({"text": "good", "label": ["pos"]}, "field 'label' holds a list ['pos'], but a single label is expected"),
])
def test_classification_labels_of_the_wrong_type_name_file_line_and_field(tmp_path, record, message):
    import json

    from nlpkit_tasks.classification import ClassificationTask

    path = write(tmp_path, "a.jsonl", (json.dumps({"text": "fine", "label": "pos"}) + "\n" + json.dumps(record) + "\n").encode())
    with pytest.raises(DataError, match=re.escape(f"{path}:2: {message}")):
        list(ClassificationTask().read(path))
    assert list(ClassificationTask().read(write(tmp_path, "b.jsonl", b'{"text": "a", "label": 3}\n{"text": "b", "label": true}\n')))[1]["label"] == "true"


def test_predict_inputs_of_the_wrong_type_name_the_field():
    from nlpkit_tasks.classification import ClassificationTask
    from nlpkit_tasks.ner import NerTask

    with pytest.raises(DataError, match="field 'text' of the input must be a string, got a JSON object"):
        ClassificationTask().parse_input({"text": {"a": 1}})
    with pytest.raises(DataError, match="field 'tokens' of the input must be a non-empty list of words"):
        NerTask().parse_input({"tokens": 5})
    with pytest.raises(DataError, match="empty input text"):
        NerTask().parse_input("  ")


def test_offsets_and_lines_are_exact_beyond_the_first_chunk(tmp_path):
    from nlpkit.sdk.data import CHUNK_BYTES

    lines_before = 3 * CHUNK_BYTES // 4 + 17  # past several chunks, not on a chunk edge
    data = b"ab\r\n" * lines_before + b"ok \xff\n"
    path = write(tmp_path, "a.txt", data)
    with pytest.raises(DataError) as info:
        list(read_text_lines(path))
    assert info.value.line == lines_before + 1
    assert f"not UTF-8 at byte {4 * lines_before + 3} " in str(info.value)
    gz = write(tmp_path, "b.txt.gz", gzip.compress(b"x\n" * lines_before + b"\x00\n"))
    with pytest.raises(DataError, match=f"a NUL byte at byte {2 * lines_before} \\(line {lines_before + 1}\\)"):
        list(read_text_lines(gz))
    assert len(list(read_text_lines(write(tmp_path, "c.txt", b"ab\r\n" * lines_before)))) == lines_before
