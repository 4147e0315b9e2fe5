"""nlpkit's own export format, for the tasks no standard transformers class computes: the backbone as a Hugging
Face folder (``backbone/``, ``AutoModel.from_pretrained`` loads it), the tokenizer, every head's tensors in
``heads.safetensors`` (named ``<task>.<parameter>``) and ``nlpkit.json`` (label maps, options)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence


class no_progress_bars:
    """save_pretrained draws a progress bar per shard: noise in a CLI that prints one line per task."""

    def __enter__(self):
        from transformers.utils import logging

        self.was = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging

        if self.was:
            logging.enable_progress_bar()
        return False


def write_raw(pipe: Any, tasks: Sequence[Any], out: Path) -> None:
    """The fallback: the backbone as a Hugging Face folder and the heads as plain tensors."""
    from safetensors.torch import save_file

    backbone = pipe.model.backbone
    with no_progress_bars():
        backbone.model.save_pretrained(out / "backbone")
    backbone.tokenizer.save_pretrained(out / "tokenizer")
    tensors = {}
    for t in tasks:
        for key, value in pipe.model.heads[t.name].state_dict().items():
            tensors[f"{t.name}.{key}"] = value.detach().contiguous().clone()  # tied tensors: own copy
    save_file(tensors, str(out / "heads.safetensors"), metadata={"format": "nlpkit-heads"})
    meta = dict(pipe.meta)
    meta["tasks"] = [e for e in meta["tasks"] if e["name"] in {t.name for t in tasks}]
    meta.pop("files", None)
    (out / "nlpkit.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
