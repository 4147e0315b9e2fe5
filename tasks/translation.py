"""Machine translation: aligned text files, TSV or JSONL in; sacreBLEU corpus BLEU and chrF out.

How ``--data train=PATH`` names the two sides of a parallel corpus (plain text, one sentence a line):
  * ``PREFIX``           -> PREFIX.<source_lang> and PREFIX.<target_lang> (each may end in .gz)
  * ``PREFIX.<source_lang>[.gz]`` -> its partner PREFIX.<target_lang>[.gz]
  * ``SRC_FILE,TGT_FILE`` -> exactly those two files
Files ending in .tsv (source TAB target) or .jsonl/.json ({"translation": {"en": .., "de": ..}} as on
the hub, or {"source": .., "target": ..}) hold both sides; ``hub:NAME[:CONFIG]:SPLIT`` reads a hub
dataset (``hub:wmt16:de-en:validation``; online, needs the `datasets` package).
Scores are computed on detokenized text by sacreBLEU, whose signature string is reported with them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from nlpkit import ConfigError, DataError, Task, register_task
from nlpkit.sdk.data import open_text, read_jsonl, read_text_lines
from nlpkit.sdk.generation import (GenerationOptions, TextGeneration,
                                   hub_records, pair, source_input,
                                   warn_skipped)

from . import DATA_DIR

#: names T5 uses in its prefixes ("translate English to German: ")
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "ro": "Romanian", "es": "Spanish",
                  "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "cs": "Czech", "ru": "Russian",
                  "zh": "Chinese", "ja": "Japanese", "fi": "Finnish", "tr": "Turkish", "pl": "Polish"}


@dataclass
class TranslationOptions(GenerationOptions):
    #: language codes: JSONL keys, TSV header names, parallel file suffixes, T5 prefix, BLEU tokenizer
    source_lang: str = "en"
    target_lang: str = "de"
    max_length: int = 256
    max_target_length: int = 256
    #: sacreBLEU tokenizer (13a, intl, zh, char, none, ...); default: sacreBLEU's choice for target_lang
    bleu_tokenize: Optional[str] = None


# ---- reading ---------------------------------------------------------------------------------------
def _base(path: str) -> str:
    """The file name without a final .gz."""
    return path[:-3] if path.endswith(".gz") else path


def parallel_files(path: str, src: str, tgt: str) -> tuple[str, str]:
    """The (source, target) plain-text files that ``path`` names (see the module docstring)."""
    if "," in path and not os.path.exists(path):
        parts = [p.strip() for p in path.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"expected SRC_FILE,TGT_FILE (two paths), got {len(parts)} part(s)", path)
        return parts[0], parts[1]
    if os.path.isfile(path):
        base, gz = _base(path), path[len(_base(path)):]
        if not base.endswith(f".{src}"):
            raise DataError(
                f"cannot tell where the {tgt} side of this plain-text file is: name the files PREFIX.{src} and "
                f"PREFIX.{tgt}, or give both as train=SRC_FILE,TGT_FILE (or use .tsv / .jsonl)", path)
        partner = base[: -len(src)] + tgt
        for candidate in (partner + gz, partner, partner + ".gz"):
            if os.path.isfile(candidate):
                return path, candidate
        raise DataError(f"the {tgt} side {partner + gz!r} of this file does not exist", path)
    for ext in ("", ".gz"):
        if os.path.isfile(f"{path}.{src}{ext}"):
            for tgt_ext in (ext, ".gz" if not ext else ""):
                if os.path.isfile(f"{path}.{tgt}{tgt_ext}"):
                    return f"{path}.{src}{ext}", f"{path}.{tgt}{tgt_ext}"
            raise DataError(f"found {path}.{src}{ext} but not its {tgt} side {path}.{tgt}{ext}", path)
    raise DataError(f"file not found (nor {path}.{src} / {path}.{tgt} as a prefix)", path)


def read_parallel(src_path: str, tgt_path: str, skip_empty: bool = False, encoding: str = "utf-8",
                  skipped: list[int] | None = None) -> Iterator[dict]:
    """Line i of one file aligns with line i of the other; counts must match (lines holding only a
    byte-order mark count as lines here, as blank ones: skipping them would misalign the sides). Both files
    are streamed side by side; pairs left out by skip_empty are counted in ``skipped[0]``."""
    skipped = skipped if skipped is not None else [0]
    with open_text(src_path, encoding) as fs, open_text(tgt_path, encoding) as ft:
        i = 0
        while True:
            s, t = next(fs, None), next(ft, None)
            if s is None or t is None:
                break
            i += 1
            ex = pair(s.rstrip("\r\n"), t.rstrip("\r\n"), (src_path, i), skip_empty, (tgt_path, i))
            if ex is None:
                skipped[0] += 1
            else:
                yield ex
        more_src = (s is not None) + sum(1 for _ in fs)
        more_tgt = (t is not None) + sum(1 for _ in ft)
    if more_src or more_tgt:
        raise DataError(f"misaligned parallel files: {src_path} has {i + more_src} lines but {tgt_path} has "
                        f"{i + more_tgt} lines; line i of one must translate line i of the other", src_path)


def read_tsv(path: str, src: str, tgt: str, skip_empty: bool = False, encoding: str = "utf-8",
             skipped: list[int] | None = None) -> Iterator[dict]:
    """SOURCE<TAB>TARGET per line; a first line naming the columns (en<TAB>de, source<TAB>target) picks them."""
    skipped = skipped if skipped is not None else [0]
    cols = (0, 1)
    first = True
    for lineno, line in read_text_lines(path, encoding):
        if not line.strip():
            continue
        parts = line.split("\t")
        if first:
            first = False
            header = [p.strip().lower() for p in parts]
            for names in ((src, tgt), ("source", "target"), ("src", "tgt")):
                if names[0] in header and names[1] in header:
                    cols = (header.index(names[0]), header.index(names[1]))
                    break
            else:
                header = None
            if header is not None:
                continue
        if len(parts) <= max(cols):
            raise DataError(f"expected at least {max(cols) + 1} tab-separated columns (source, target), "
                            f"got {len(parts)}", path, lineno)
        ex = pair(parts[cols[0]], parts[cols[1]], (path, lineno), skip_empty)
        if ex is None:
            skipped[0] += 1
        else:
            yield ex


def from_record(record: dict, src: str, tgt: str, where: tuple[str, int], skip_empty: bool) -> dict | None:
    if isinstance(record.get("translation"), dict):
        tr = record["translation"]
        if src not in tr or tgt not in tr:
            raise DataError(f"expected keys {src!r} and {tgt!r} in \"translation\" (source_lang/target_lang "
                            f"options), found {sorted(tr)}", *where)
        return pair(tr[src], tr[tgt], where, skip_empty)
    if "source" in record and "target" in record:
        return pair(record["source"], record["target"], where, skip_empty)
    if src in record and tgt in record:  # one column per language, as bentrevett/multi30k on the hub
        return pair(record[src], record[tgt], where, skip_empty)
    raise DataError(f"expected {{\"translation\": {{\"{src}\": ..., \"{tgt}\": ...}}}}, "
                    f"{{\"source\": ..., \"target\": ...}} or {{\"{src}\": ..., \"{tgt}\": ...}}, "
                    f"found keys {sorted(record)}", *where)


def read_records(records, path: str, src: str, tgt: str, skip_empty: bool,
                 skipped: list[int] | None = None) -> Iterator[dict]:
    skipped = skipped if skipped is not None else [0]
    for line, record in records:
        ex = from_record(record, src, tgt, (path, line), skip_empty)
        if ex is None:
            skipped[0] += 1
        else:
            yield ex


# ---- the plugin ------------------------------------------------------------------------------------
@register_task("translation")
class TranslationTask(Task):
    sample_inputs = ["A man is walking his dog in the park .", "Two children play football ."]
    description = "machine translation (parallel text / TSV / JSONL; sacreBLEU BLEU and chrF)"
    Options = TranslationOptions
    main_score = "bleu"
    #: on a decoder-only model: causal-LM fine-tuning on "instruction + source" prompts (nlpkit.sdk.generation)
    backbone_kinds = ("encoder", "encoder-decoder", "decoder")

    def default_data(self) -> dict[str, str]:
        o = self.options
        if (o.source_lang, o.target_lang) != ("en", "de"):
            raise ConfigError(f"task {self.name!r}: the embedded data is en->de, but source_lang/target_lang are "
                              f"{o.source_lang}/{o.target_lang}; give data with --data train=PATH")
        folder = DATA_DIR / "translation"
        return {"train": str(folder / "train.en"), "dev": str(folder / "dev.en")}

    def read(self, path: str) -> Iterator[dict]:
        """Pairs streamed from the file(s); the skipped-pairs warning comes once the file has been read."""
        o = self.options
        src, tgt = o.source_lang, o.target_lang
        kind = Path(_base(path)).suffix.lower()
        skipped = [0]
        if kind == ".tsv":
            yield from read_tsv(path, src, tgt, o.skip_empty, o.encoding, skipped)
        elif kind in (".jsonl", ".json"):
            yield from read_records(read_jsonl(path, o.encoding), path, src, tgt, o.skip_empty, skipped)
        else:
            yield from read_parallel(*parallel_files(path, src, tgt), o.skip_empty, o.encoding, skipped)
        warn_skipped(self.name, skipped[0], path)

    def read_hub(self, rows: Any, spec: str) -> Iterator[dict]:
        """A hub split (``hub:wmt16:de-en:validation``) with {"translation": {...}} or source/target fields."""
        o = self.options
        skipped = [0]
        yield from read_records(hub_records(rows), spec, o.source_lang, o.target_lang, o.skip_empty, skipped)
        warn_skipped(self.name, skipped[0], spec)

    # ---- the model: it writes the target text -----------------------------------------------------------
    def modeling(self) -> TextGeneration:
        return TextGeneration(self.name, self.options, instruction=self.instruction(),
                              response_cue=self.response_cue(), default_prefix=self.default_prefix)

    def default_prefix(self, model_config: Any) -> str:
        src, tgt = self.options.source_lang, self.options.target_lang
        params = getattr(model_config, "task_specific_params", None) or {}
        known = params.get(f"translation_{src}_to_{tgt}", {}).get("prefix")
        if known is not None:
            return known
        if getattr(model_config, "model_type", "") == "t5":
            return f"translate {LANGUAGE_NAMES.get(src, src)} to {LANGUAGE_NAMES.get(tgt, tgt)}: "
        return ""

    def instruction(self) -> str:
        """The decoder-only prompt's first line; it plays the part T5's prefix plays on an encoder-decoder."""
        return f"Translate {self._language(self.options.source_lang)} to {self._language(self.options.target_lang)}."

    def response_cue(self) -> str:
        return f"{self._language(self.options.target_lang)}:"

    @staticmethod
    def _language(code: str) -> str:
        return LANGUAGE_NAMES.get(code, code)

    def score(self, predictions: Sequence[dict], examples: Sequence[dict]) -> dict[str, Any]:
        from sacrebleu.metrics import BLEU, CHRF

        hyps = [p["text"] for p in predictions]
        refs = [[ex["target"] for ex in examples]]
        bleu = BLEU(trg_lang=self.options.target_lang, tokenize=self.options.bleu_tokenize)
        chrf = CHRF()
        b, c = bleu.corpus_score(hyps, refs), chrf.corpus_score(hyps, refs)
        return {"bleu": b.score, "chrf": c.score, "bleu_brevity_penalty": b.bp,
                "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
                **self.strategy.stats(predictions)}

    def parse_input(self, item: str | dict) -> dict:
        if isinstance(item, dict) and isinstance(item.get("translation"), dict):
            item = item["translation"].get(self.options.source_lang, "")
        elif isinstance(item, dict) and self.options.source_lang in item:
            item = item[self.options.source_lang]
        return source_input(item)

    def format_prediction(self, prediction: dict) -> str:
        return prediction["text"]
