"""Every measured figure in the docs comes with the command that measured it.

The rule, for README.md and every docs/**/*.md: a markdown table or a fenced block that holds measured figures must
have a command beside it, i.e. a line holding ``python benchmarks/...``, ``bash scripts/...`` or ``nlpkit
<subcommand> <arguments>`` either inside the block, or between the previous heading and the block, or in the 15
lines before it. A failure lists file:line of each block that has none.

What counts as measured (a heuristic, tuned so that tables of settings pass):

- a table whose header names a measurement (a score, a time, a throughput, a memory size, a ratio) and whose data
  rows hold a number;
- any other table with a data cell that starts with a number in a unit of measurement (``12.5 s``, ``3 ms``,
  ``1.2 GB``, ``3.1x``, ``45 %``, ``640 samples/s``, ...), unless it is a settings table: its header has a
  ``default``, ``flag``, ``option`` or ``key`` column (there a ``30 s`` is a setting, not a result);
- a fenced block with such a number anywhere in it (a log, a printed table).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 15  # lines before a block that may hold its command

_NUMBER = r"(?<![\w.])[-+−]?\d[\d,]*(?:\.\d+)?"
_UNITS = (r"samples/s|tokens/s|sentences/s|requests/s|steps/s|examples/s|it/s|[GTM]?FLOP/s|samples/CPU-s|"
          r"tokens/CPU-s|ms|us|µs|s|min|GB|MB|KB|kB|GiB|MiB|KiB|TB|%")
#: a number with a unit of measurement; a ratio ("3.1x") only when the x touches the number ("2048x2048" and
#: "2 x batch" are not ratios)
MEASURED = re.compile(rf"{_NUMBER}(?:\s?(?:{_UNITS})(?![\w/])|[x×](?![\w.]))")
#: a table cell that starts with such a number ("0.15 s", "**3.1x**", "640 samples/s (5x)"); "15% of the
#: tokens" in a description does not
MEASURED_CELL = re.compile(rf"^[*_`(~\s]*{_NUMBER}(?:\s?(?:{_UNITS})(?![\w/])|[x×](?![\w.]))")
#: header words of a column of measurements
METRIC_HEADER = re.compile(
    r"\b(?:f1|accuracy|bleu|rouge\w*|chrf|exact match|em|loss|perplexity|score|mfu|[gt]?flop/s|wall|time|latency|"
    r"p50|p90|p95|p99|rss|memory|mb|gb|mib|gib|ms|us|(?<!')s|ratio|speed-?up|throughput|measured|median|gain)\b"
    r"|/s\b", re.IGNORECASE)
SETTINGS_HEADER = re.compile(r"^(?:default|flag|flags|option|options|key|flag \(default\))$", re.IGNORECASE)
#: a command line: python benchmarks/..., bash scripts/..., or nlpkit SUBCOMMAND with its arguments (a mention in
#: prose, "`nlpkit train` processes", is not one)
COMMAND = re.compile(r"\bpython3? benchmarks/|\bbash scripts/"
                     r"|\bnlpkit (?:train|evaluate|predict|serve|export|tasks)(?=\s+[^\s`]|\s*$)")
HEADING = re.compile(r"^#{1,6}\s")
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass
class Block:
    kind: str  # "table" or "fenced"
    start: int  # 0-based index of its first line
    end: int  # index after its last line
    lines: list[str]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def blocks(lines: list[str]) -> list[Block]:
    """The tables and fenced blocks of a markdown file (a table inside a fenced block is part of that block)."""
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(fence.group(1)):
                j += 1
            found.append(Block("fenced", i, min(j + 1, len(lines)), lines[i:j + 1]))
            i = j + 1
        elif lines[i].lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            found.append(Block("table", i, j, lines[i:j]))
            i = j
        else:
            i += 1
    return found


def _is_separator(line: str) -> bool:
    return bool(re.fullmatch(r"[\s|:\-]+", line)) and "-" in line


def measured(block: Block) -> bool:
    if block.kind == "fenced":
        return any(MEASURED.search(line) for line in block.lines[1:-1])
    header = _cells(block.lines[0])
    data = [cell for line in block.lines[1:] if not _is_separator(line) for cell in _cells(line)]
    numbers = any(re.search(r"\d", cell) for cell in data)
    metric_header = any(METRIC_HEADER.search(h) for h in header)
    settings = any(SETTINGS_HEADER.match(h.strip("`* ")) for h in header)
    if metric_header and numbers:
        return True
    return not settings and any(MEASURED_CELL.match(cell) for cell in data)


def has_command(lines: list[str], block: Block) -> bool:
    if any(COMMAND.search(line) for line in block.lines):
        return True
    # the previous heading; a "# comment" inside fenced code is no heading
    fenced = {k for b in blocks(lines[:block.start]) if b.kind == "fenced" for k in range(b.start, b.end)}
    heading = block.start - 1
    while heading >= 0 and (heading in fenced or not HEADING.match(lines[heading])):
        heading -= 1
    first = min(heading + 1, max(0, block.start - WINDOW))
    return any(COMMAND.search(line) for line in lines[first:block.start])


def unsourced(text: str) -> list[tuple[int, str]]:
    """(1-based line, first line) of each block with measured figures and no command beside it."""
    lines = text.splitlines()
    return [(b.start + 1, b.lines[0].strip()) for b in blocks(lines) if measured(b) and not has_command(lines, b)]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# ---- the heuristic on small samples ------------------------------------------------------------------------
RESULT_TABLE = """\
| run | samples/s | dev F1 |
|---|---|---|
| nlpkit | 812.4 | 88.10 |
| HF Trainer | 700.1 | 88.02 |
"""


def test_a_result_table_with_its_command_passes():
    text = "## Speed\n\nMeasured with\n\n    python benchmarks/train_throughput.py --repeats 3\n\n" + RESULT_TABLE
    assert unsourced(text) == []


def test_a_result_table_without_a_command_is_reported_with_its_line():
    text = "# Title\n\n## Speed\n\nWe measured this:\n\n" + RESULT_TABLE
    assert unsourced(text) == [(7, "| run | samples/s | dev F1 |")]


def test_a_command_before_the_previous_heading_and_beyond_the_window_does_not_count():
    far = "python benchmarks/train_throughput.py\n" + "filler\n" * (WINDOW + 2) + "## Another section\n\n"
    assert len(unsourced(far + RESULT_TABLE)) == 1
    # within the window the command counts even across a heading; so does one anywhere in the same section
    assert unsourced("python benchmarks/x.py\n## Section\n\n" + RESULT_TABLE) == []
    section = "## Section\n`nlpkit train --task ner` gave:\n" + "filler\n" * (WINDOW + 5) + RESULT_TABLE
    assert unsourced(section) == []


def test_a_command_inside_the_block_counts():
    table = RESULT_TABLE + "| command | `bash scripts/bench.sh` | |\n"
    assert unsourced("## Results\n\n" + table) == []


def test_option_tables_pass():
    options = """\
| key | default | meaning |
|---|---|---|
| `eval_batch_size` | 2 × batch_size | batch size for evaluation |
| `timeout` | 30 s | give up after this long |
| `warmup_ratio` | 0.06 | 6 % of the steps warm up |
"""
    flags = """\
| flag | meaning |
|---|---|
| `--max-wait-ms 5` | wait up to 5 ms for a batch to fill |
"""
    exit_codes = "| code | when |\n|---|---|\n| 0 | done |\n| 130 | Ctrl-C |\n"
    assert unsourced("## Options\n\n" + options + "\n" + flags + "\n" + exit_codes) == []


def test_a_table_describing_features_passes_even_with_a_percentage_in_its_prose():
    features = """\
| task | backbones | objective |
|---|---|---|
| `masked-lm` | encoders | BERT masking: 15% of the tokens, 80/10/10 |
| `denoising` | encoder-decoders | spans over 30% of the tokens |
"""
    assert unsourced("## Tasks\n\n" + features) == []


def test_a_mention_of_a_subcommand_in_prose_is_not_a_command():
    text = "## Runs\n\nWall times are whole `nlpkit train` processes.\n\n" + RESULT_TABLE
    assert unsourced(text) == [(5, "| run | samples/s | dev F1 |")]
    assert unsourced("## Runs\n\n`nlpkit train --recipe r.yaml` gave:\n\n" + RESULT_TABLE) == []


def test_units_in_a_table_without_a_metric_header_count():
    table = "| | head | generative |\n|---|---|---|\n| evaluating the dev set | 0.15 s | 1.2 s (8x) |\n"
    assert unsourced("## Cost\n\n" + table) == [(3, "| | head | generative |")]


def test_fenced_blocks_with_figures_need_a_command_and_code_does_not():
    log = "## Log\n\n```\nstep 100  loss 2.31  812 samples/s  peak RSS 1.2 GB\n```\n"
    assert unsourced(log) == [(3, "```")]
    assert unsourced("## Log\n\n```\n$ nlpkit train --task ner\nstep 100 812 samples/s\n```\n") == []
    code = "## Use\n\n```yaml\ntrainer:\n  lr: 1e-4\n  batch_size: 32\n  shape: 2048x2048\n```\n"
    assert unsourced(code) == []


def test_a_comment_in_a_bash_block_is_not_a_heading():
    text = ("## Speed\n\n`python benchmarks/a.py` measured it.\n\n```bash\n# only a comment\necho hi\n```\n\n"
            + RESULT_TABLE)
    assert unsourced(text) == []


# ---- the real docs -----------------------------------------------------------------------------------------
def test_every_measured_figure_in_the_docs_has_its_command():
    problems = [f"{path.relative_to(ROOT)}:{line}: {first[:90]}"
                for path in doc_files() for line, first in unsourced(path.read_text(encoding="utf-8"))]
    assert not problems, ("tables / fenced blocks of measured figures with no `python benchmarks/...`, "
                          "`bash scripts/...` or `nlpkit <subcommand>` line inside them, in their section before "
                          f"them or in the {WINDOW} lines before them:\n" + "\n".join(problems))

