"""What an export reports: ``ExportResult`` (the CLI prints it) and ``nlpkit_export.json`` beside the model, which
records the same for whoever opens the folder later."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..._version import __version__

#: outputs of an exported model and of nlpkit must agree this closely on the sample inputs
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    out: Path
    format: str
    #: task -> what was written for it ("AutoModelForTokenClassification", "onnx", "backbone + heads")
    written: dict[str, str] = field(default_factory=dict)
    #: task -> why it has no standard class / no ONNX graph
    notes: dict[str, str] = field(default_factory=dict)
    #: task -> largest absolute difference measured in the check
    max_diff: dict[str, float] = field(default_factory=dict)


def write_export_info(out: Path, result: ExportResult) -> None:
    info = {"nlpkit_version": __version__, "format": result.format, "written": result.written,
            "notes": result.notes, "max_diff": result.max_diff, "tolerance": TOLERANCE}
    (out / "nlpkit_export.json").write_text(json.dumps(info, indent=2) + "\n")
