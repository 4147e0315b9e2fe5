"""``nlpkit export RUN --format transformers|onnx OUT``: hand a trained model to another stack.

transformers
    Where a task's head computes the same function as a standard ``AutoModelFor*`` head, OUT is a plain
    Hugging Face folder (``from_pretrained`` and ``pipeline()`` load it): the backbone weights are
    copied as they are and the head weights are mapped onto the standard head. The mapping is checked
    numerically on sample inputs (outputs within 1e-4) before anything is written, so an export never
    silently changes predictions. A plugin whose own head is a standard head in disguise hands over the
    standard model itself (``Task.export_model``), checked the same way against the plugin's own logits
    (``Task.export_logits``) at every real position. Where no standard class computes the same function
    (relation extraction's entity-pair head, the tied decoder built on an encoder, mean pooling, several
    tasks at once), OUT holds the backbone as a Hugging Face folder plus the heads in safetensors, and the
    model card says why.

onnx
    ``torch.onnx.export`` (the torch.export-based exporter) of backbone + head for each encoder task,
    with dynamic batch and sequence axes; every graph is run with onnxruntime on sample inputs and must
    match torch within 1e-4, or the export fails.

Every export carries a model card (README.md): tasks, labels, training data, dev metrics, config,
nlpkit version and the base model's license where it is known.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .._version import __version__
from ..sdk.errors import ConfigError, NlpkitError, NotStandard
from .onnx_export import TOLERANCE, export_task_onnx, require_onnx_extra, sample_batch, sample_inputs

FORMATS = ("transformers", "onnx")


#: the pipeline() task that loads each class, where the installed transformers has one (transformers 5
#: dropped the question-answering, translation and summarization pipelines)
PIPELINES = {"AutoModelForTokenClassification": "token-classification",
             "AutoModelForSequenceClassification": "text-classification",
             "AutoModelForMaskedLM": "fill-mask", "AutoModelForCausalLM": "text-generation"}


class _no_progress_bars:
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


# ---- model card -------------------------------------------------------------------------------------
def model_card(pipe: Any) -> dict[str, Any]:
    """What a model card says, as data (``/v1/tasks`` serves it; exports render it as README.md)."""
    meta = pipe.meta
    config = meta.get("config") or {}
    entries = {(e.get("name") or e.get("type")): e for e in config.get("tasks") or []}
    metrics = meta.get("metrics") or {}
    tasks = []
    for t in pipe.tasks:
        data = dict((entries.get(t.name) or {}).get("data") or {})
        if not data:
            try:
                data = {k: f"{v} (bundled with nlpkit)" for k, v in t.default_data().items()}
            except Exception:  # noqa: BLE001 - a plugin without embedded data
                data = {}
        scores = {k: v for k, v in (metrics.get(t.name) or {}).items() if isinstance(v, (int, float))}
        tasks.append({"name": t.name, "type": t.type_name, "labels": t.state_dict().get("labels"),
                      "training_data": data, "dev_metrics": scores, "main_score": t.main_score})
    backbone = meta.get("backbone") or {}
    return {
        "nlpkit_version": (meta.get("versions") or {}).get("nlpkit"),
        "versions": meta.get("versions"),
        "created": meta.get("created"),
        "step": meta.get("step"),
        "backbone": backbone,
        "license": base_model_license(backbone.get("spec")),
        "tasks": tasks,
        "config": config,
    }


def base_model_license(spec: str | None) -> str | None:
    """The license of the base model, read from its model card's front matter where one is at hand
    (a local folder, an installed alias, the Hugging Face cache); None when it is not known."""
    if not spec:
        return None
    from ..engine.backbone import PRESETS, resolve_alias

    if spec in PRESETS:
        return None  # trained from scratch: no base model, the license is the user's
    candidates: list[Path] = []
    try:
        source = resolve_alias(spec)
    except NlpkitError:
        return None
    folder = Path(source)
    if folder.exists():
        candidates += [folder / "README.md", folder.parent / "README.md"]
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "README.md")
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # noqa: BLE001 - no cache, no license
            pass
    for path in candidates:
        found = _front_matter_license(path)
        if found:
            return found
    return None


def _front_matter_license(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    import yaml

    try:
        front = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return str(value) if value else None


def card_markdown(card: dict[str, Any], export_notes: Sequence[str] = ()) -> str:
    """README.md for an export, with Hugging Face front matter (license, library, tags)."""
    front = {"library_name": "transformers", "tags": ["nlpkit"] + [t["type"] for t in card["tasks"]]}
    if card.get("license"):
        front["license"] = card["license"]
    import yaml

    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# nlpkit model: {', '.join(t['name'] for t in card['tasks'])}", "",
             f"Exported from an nlpkit {card.get('nlpkit_version')} checkpoint (step {card.get('step')}, "
             f"saved {card.get('created')}).", ""]
    bb = card.get("backbone") or {}
    lines += [f"- backbone: `{bb.get('spec')}` ({bb.get('model_type')}, {bb.get('kind')}, "
              f"{bb.get('parameters')} parameters)",
              f"- license: {card.get('license') or 'not known (no base model license found; a from-scratch '}"
              + ("" if card.get("license") else "model is under the terms its trainer chooses)"),
              f"- versions: {card.get('versions')}", ""]
    if export_notes:
        lines += ["## This export", ""] + [f"- {n}" for n in export_notes] + [""]
    for t in card["tasks"]:
        lines += [f"## Task `{t['name']}` ({t['type']})", ""]
        if t.get("labels"):
            lines.append(f"- labels: {', '.join(map(str, t['labels']))}")
        for split, path in (t.get("training_data") or {}).items():
            lines.append(f"- {split} data: `{path}`")
        if t.get("dev_metrics"):
            scores = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in t["dev_metrics"].items())
            lines.append(f"- dev metrics (main score `{t['main_score']}`): {scores}")
        lines.append("")
    lines += ["## Training config", "", "```json", json.dumps(card.get("config"), indent=2), "```", ""]
    return "\n".join(lines)


# ---- entry point ------------------------------------------------------------------------------------
def export(run_dir: str | Path, fmt: str, out: str | Path, task: str | None = None,
           merge: bool = False) -> ExportResult:
    """Write ``out`` (which must not exist, or be an empty folder) in ``fmt`` for the checkpoint.

    ``merge``: a peft checkpoint's adapters are folded into the base weights first, so OUT is a plain model
    that transformers loads without peft (checked: every task predicts what the adapter model predicts)."""
    from .predict import load

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; give a new folder")
    pipe = load(run_dir, device="cpu")
    tasks = [pipe.task(task)] if task else list(pipe.tasks)
    merged = _merge(pipe, tasks) if merge else None
    if getattr(pipe.model.backbone, "peft", None) is not None:
        raise ConfigError(f"{run_dir}: this checkpoint holds {pipe.model.backbone.peft.method} adapters over its "
                          "base model; add --merge to fold them into the weights (a plain transformers model)")
    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = (_export_transformers if fmt == "transformers" else _export_onnx)(pipe, tasks, tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = out
    if merged is not None:
        result.max_diff.update({f"{name} (merge)": diff for name, diff in merged.items()})
    return result


#: a merged model must predict what the adapter model predicted, this closely (probabilities, scores)
MERGE_TOLERANCE = 1e-4


def _merge(pipe: Any, tasks: Sequence[Any]) -> dict[str, float]:
    """Fold the adapters into the weights and check each task's predictions on its sample inputs before and
    after (generated token ids must be equal). Returns the largest difference per task."""
    import torch

    from ..engine import adapters

    if getattr(pipe.model.backbone, "peft", None) is None:
        raise ConfigError("--merge: this checkpoint has no adapters to merge (it was not trained with --peft)")
    backbone = pipe.model.backbone

    def outputs() -> dict[str, Any]:
        with torch.no_grad():
            return {t.name: t.predict_batch(pipe.model.heads[t.name], backbone, sample_batch(t)) for t in tasks}

    before = outputs()
    adapters.merge(backbone)
    after = outputs()
    diffs = {name: _difference(before[name], after[name]) for name in before}
    bad = {name: d for name, d in diffs.items() if not d <= MERGE_TOLERANCE}
    if bad:
        raise NlpkitError(f"--merge: the merged model does not predict what the adapters did (largest differences "
                          f"{bad}, tolerance {MERGE_TOLERANCE:g}); nothing was written")
    return diffs


def _difference(a: Any, b: Any) -> float:
    """Largest absolute difference of two predict_batch outputs (nested lists, tuples, dicts, tensors);
    anything unequal that is not a number (a token, a label) counts as infinite."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if a.shape != b.shape:
            return float("inf")
        if not a.is_floating_point():
            return 0.0 if torch.equal(a, b) else float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
            return max((_difference(a[k], b[k]) for k in a), default=0.0)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            return max((_difference(x, y) for x, y in zip(a, b)), default=0.0)
        return 0.0 if a == b else float("inf")
    if isinstance(a, int) and isinstance(b, int):
        return 0.0 if a == b else float("inf")  # an index, a token id: must be equal
    return abs(float(a) - float(b))


def _write_card(pipe: Any, tasks: Sequence[Any], folder: Path, notes: Sequence[str]) -> None:
    card = model_card(pipe)
    card["tasks"] = [t for t in card["tasks"] if t["name"] in {x.name for x in tasks}]
    (folder / "README.md").write_text(card_markdown(card, notes))


# ---- transformers -----------------------------------------------------------------------------------
def _export_transformers(pipe: Any, tasks: Sequence[Any], out: Path) -> ExportResult:
    result = ExportResult(out, "transformers")
    if len(tasks) == 1:
        t = tasks[0]
        try:
            model, cls_name, diff = standard_model(pipe, t)
        except NotStandard as exc:
            result.notes[t.name] = str(exc)
        else:
            with _no_progress_bars():
                model.save_pretrained(out)
            t.export_tokenizer(pipe.model.backbone.tokenizer).save_pretrained(out)
            result.written[t.name], result.max_diff[t.name] = cls_name, diff
            loads = PIPELINES.get(cls_name)
            how = f"`transformers.pipeline(\"{loads}\", model=OUT)` and `{cls_name}.from_pretrained(OUT)`" if loads \
                else f"`{cls_name}.from_pretrained(OUT)` (this transformers version has no pipeline for it)"
            checked = "the same generated text for the sample inputs" if cls_name == "AutoModelForSeq2SeqLM" \
                else f"largest output difference {diff:.2e}"
            notes = [f"`{t.name}`: {cls_name}: {how} load this folder; checked against nlpkit: {checked}"]
            _write_card(pipe, tasks, out, notes)
            _write_export_info(out, result)
            return result
    else:
        for t in tasks:
            result.notes[t.name] = "several tasks share one backbone: no single standard class holds them " \
                                   "(export one with --task NAME)"
    _write_raw(pipe, tasks, out)
    for t in tasks:
        result.written[t.name] = "backbone + heads (safetensors)"
    notes = [f"`{name}`: no standard transformers class; {why}. Written: `backbone/` (AutoModel."
             "from_pretrained), `tokenizer/`, `heads.safetensors` (tensors named `<task>.<parameter>`) and "
             "`nlpkit.json` (label maps, options)" for name, why in result.notes.items()]
    _write_card(pipe, tasks, out, notes)
    _write_export_info(out, result)
    return result


def _write_export_info(out: Path, result: ExportResult) -> None:
    info = {"nlpkit_version": __version__, "format": result.format, "written": result.written,
            "notes": result.notes, "max_diff": result.max_diff, "tolerance": TOLERANCE}
    (out / "nlpkit_export.json").write_text(json.dumps(info, indent=2) + "\n")


def _write_raw(pipe: Any, tasks: Sequence[Any], out: Path) -> None:
    """The fallback: the backbone as a Hugging Face folder and the heads as plain tensors."""
    from safetensors.torch import save_file

    backbone = pipe.model.backbone
    with _no_progress_bars():
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


def standard_model(pipe: Any, task: Any) -> tuple[Any, str, float]:
    """(transformers model with the task's weights, its Auto class name, measured difference), or
    NotStandard when no standard head computes the same function."""
    from ..sdk.heads import (EntityPairHead, MultipleChoiceHead, Seq2SeqHead, SequenceClassificationHead,
                             SpanExtractionHead, TokenClassificationHead)

    backbone, head = pipe.model.backbone, pipe.model.heads[task.name]
    own = task.export_model(backbone, head)
    if own is not None:  # the plugin's own head as a standard model
        model, name = own
        model.eval()
        diff = _compare_logits(task, backbone, head, model)
        if not diff <= TOLERANCE:
            raise NotStandard(f"{name} from task {task.name!r} does not reproduce its head on this "
                              f"{backbone.model.config.model_type} backbone (largest difference {diff:.3g} > "
                              f"{TOLERANCE:g})")
        return model, name, diff
    if isinstance(head, Seq2SeqHead):
        if not head.encoder_decoder:
            raise NotStandard("the seq2seq head on an encoder backbone is a decoder built by nlpkit whose "
                              "embeddings are tied to the encoder's; no Auto class loads that pair as it is")
        model = _seq2seq_model(backbone, task)
        return model, "AutoModelForSeq2SeqLM", _check_generation(pipe, task, model)
    if backbone.kind != "encoder":
        raise NotStandard(f"the head sits on the encoder of an {backbone.kind} backbone; standard "
                          "classes for this task expect an encoder-only model")
    if isinstance(head, EntityPairHead):
        raise NotStandard("the entity-pair head reads the states of two entity-marker tokens; no standard "
                          "transformers head does that")
    builders: dict[type, Callable[..., tuple[Any, str]]] = {
        TokenClassificationHead: _token_model, SequenceClassificationHead: _sequence_model,
        SpanExtractionHead: _qa_model, MultipleChoiceHead: _choice_model}
    build = next((b for cls, b in builders.items() if isinstance(head, cls)), None)
    if build is None:
        raise NotStandard(f"head {type(head).__name__} has no standard transformers counterpart")
    model, name = build(backbone, head, task)
    model.eval()
    diff = _compare(backbone, head, model, name)
    if not diff <= TOLERANCE:
        raise NotStandard(f"{name} on this {backbone.model.config.model_type} backbone does not reproduce the "
                          f"head (largest difference {diff:.3g} > {TOLERANCE:g})")
    return model, name, diff


def _head_config(backbone: Any, **changes: Any) -> Any:
    import copy

    config = copy.deepcopy(backbone.model.config)
    for key, value in changes.items():
        setattr(config, key, value)
    config.architectures = None
    return config


def _with_backbone(auto_cls: Any, backbone: Any, config: Any) -> Any:
    """A standard model whose base model holds the backbone's weights (a pooler, if any, comes from the head)."""
    model = auto_cls.from_config(config)
    missing, unexpected = model.base_model.load_state_dict(backbone.model.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.startswith("pooler.")]:
        raise NotStandard(f"{type(model).__name__} has another base model layout (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return model


def _labels(task: Any) -> dict[str, Any]:
    labels = list(task.state_dict().get("labels") or [])
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {lab: i for i, lab in enumerate(labels)}}


def _copy(target: Any, source: Any) -> None:
    target.weight.data.copy_(source.weight.data)
    target.bias.data.copy_(source.bias.data)


def _pooler_and_classifier(model: Any, head: Any, dense: Any, out: Any) -> None:
    """BERT-style pooled heads: tanh(dense(CLS)) then a linear layer; RoBERTa keeps both in its classifier."""
    pooler = getattr(model.base_model, "pooler", None)
    if hasattr(model, "classifier") and hasattr(model.classifier, "out_proj"):  # RoBERTa sequence classification
        _copy(model.classifier.dense, dense)
        _copy(model.classifier.out_proj, out)
    elif pooler is not None and hasattr(model, "classifier"):
        _copy(pooler.dense, dense)
        _copy(model.classifier, out)
    else:
        raise NotStandard(f"{type(model).__name__} has no pooler + classifier to hold the head")


def _token_model(backbone: Any, head: Any, task: Any) -> tuple[Any, str]:
    from transformers import AutoModelForTokenClassification

    model = _with_backbone(AutoModelForTokenClassification, backbone, _head_config(backbone, **_labels(task)))
    _copy(model.classifier, head.classifier)
    return model, "AutoModelForTokenClassification"


def _sequence_model(backbone: Any, head: Any, task: Any) -> tuple[Any, str]:
    from transformers import AutoModelForSequenceClassification

    if head.pooling != "cls":
        raise NotStandard(f"the classification head pools by {head.pooling!r}; standard classes pool the first "
                          "token ([CLS])")
    problem = "multi_label_classification" if head.multi_label else "single_label_classification"
    config = _head_config(backbone, problem_type=problem, **_labels(task))
    model = _with_backbone(AutoModelForSequenceClassification, backbone, config)
    _pooler_and_classifier(model, head, head.dense, head.classifier)
    return model, "AutoModelForSequenceClassification"


def _qa_model(backbone: Any, head: Any, task: Any) -> tuple[Any, str]:
    from transformers import AutoModelForQuestionAnswering

    model = _with_backbone(AutoModelForQuestionAnswering, backbone, _head_config(backbone, num_labels=2))
    _copy(model.qa_outputs, head.qa_outputs)
    return model, "AutoModelForQuestionAnswering"


def _choice_model(backbone: Any, head: Any, task: Any) -> tuple[Any, str]:
    from transformers import AutoModelForMultipleChoice

    if head.pooling != "cls" or getattr(task.options, "pooling", "cls") != "cls":
        raise NotStandard(f"the multiple-choice head pools by {getattr(task.options, 'pooling', head.pooling)!r}; "
                          "AutoModelForMultipleChoice pools the first token (train with --option pooling=cls "
                          "for a standard export)")
    model = _with_backbone(AutoModelForMultipleChoice, backbone, _head_config(backbone, num_labels=1))
    _pooler_and_classifier(model, head, head.dense, head.scorer)
    return model, "AutoModelForMultipleChoice"


def _seq2seq_model(backbone: Any, task: Any) -> Any:
    """The encoder-decoder backbone IS the standard model; the prefix and decoding settings go into its
    config so that pipeline() generates what nlpkit generates."""
    import copy

    model = copy.deepcopy(backbone.model)
    model.config.prefix = getattr(task, "prefix", "") or None
    o = task.options
    gen = model.generation_config
    gen.num_beams, gen.max_new_tokens, gen.do_sample = o.num_beams, task.max_new_tokens, False
    gen.decoder_start_token_id = task.tokens.start
    gen.eos_token_id, gen.pad_token_id = task.tokens.eos, task.tokens.pad
    gen.no_repeat_ngram_size = o.no_repeat_ngram_size or None
    if o.num_beams > 1:
        gen.length_penalty, gen.early_stopping = o.length_penalty, o.early_stopping
    gen.max_length = None
    return model


def _check_generation(pipe: Any, task: Any, model: Any) -> float:
    """The standard model's ``generate`` (prefix from its config, settings from its generation config) must
    write the texts nlpkit writes for the sample inputs; 0.0 when it does."""
    import torch

    tok = pipe.model.backbone.tokenizer
    items = sample_inputs(task)
    ours = pipe.predict(items, task=task.name)
    model.eval()
    for item, pred in zip(items, ours):
        source = task.parse_input(item)["source"]
        enc = tok((model.config.prefix or "") + source, return_tensors="pt", truncation=True,
                  max_length=task.options.max_length)
        with torch.inference_mode():
            ids = model.generate(**enc)[0]
        text = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
        if text != pred["text"]:
            raise NotStandard(f"AutoModelForSeq2SeqLM.generate writes {text!r} where nlpkit writes {pred['text']!r}")
    return 0.0


def _compare(backbone: Any, head: Any, model: Any, name: str) -> float:
    """Largest |difference| between the nlpkit head and the standard model on random token ids (two rows,
    the second padded) over real positions."""
    import torch

    ids, mask = _random_ids(backbone)
    with torch.inference_mode():
        if name == "AutoModelForMultipleChoice":
            ours = head(backbone, {"input_ids": ids, "attention_mask": mask,
                                   "choice_mask": torch.ones(1, 2, dtype=torch.bool)})["logits"]
            theirs = model(input_ids=ids[None], attention_mask=mask[None]).logits
            return float((ours - theirs).abs().max())
        ours = head(backbone, {"input_ids": ids, "attention_mask": mask})
        theirs = model(input_ids=ids, attention_mask=mask)
        if name == "AutoModelForQuestionAnswering":
            real = mask.bool()
            return max(float((ours[k][real] - getattr(theirs, k)[real]).abs().max())
                       for k in ("start_logits", "end_logits"))
        if name == "AutoModelForTokenClassification":
            real = mask.bool()
            return float((ours["logits"][real] - theirs.logits[real]).abs().max())
        return float((ours["logits"] - theirs.logits).abs().max())


def _random_ids(backbone: Any) -> tuple[Any, Any]:
    """(input_ids, attention_mask): two rows of random token ids, the second padded after 6 tokens."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, backbone.model.config.vocab_size, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def _compare_logits(task: Any, backbone: Any, head: Any, model: Any) -> float:
    """Largest |difference| between a plugin's own logits (``Task.export_logits``) and its exported model's
    ``.logits``, at every real position of two batches: random token ids (padded on the right) and the task's
    sample inputs as its own ``collate`` pads them (left for prompts), where the task type has samples."""
    import torch

    ids, mask = _random_ids(backbone)
    batches = [{"input_ids": ids, "attention_mask": mask}]
    try:
        batches.append(sample_batch(task))
    except NotStandard:  # no sample inputs for this task type: the random ids alone
        pass
    diffs = []
    with torch.inference_mode():
        for batch in batches:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            ours, theirs = task.export_logits(backbone, head, inputs), model(**inputs).logits
            if ours.shape != theirs.shape:
                raise NotStandard(f"the exported model's logits have shape {tuple(theirs.shape)}, task "
                                  f"{task.name!r}'s {tuple(ours.shape)}")
            real = inputs["attention_mask"].bool()
            diffs.append((ours[real].float() - theirs[real].float()).abs().max())
    return float(torch.stack(diffs).max())  # NaN (a broken model) stays NaN and fails the check


# ---- onnx -------------------------------------------------------------------------------------------
def _export_onnx(pipe: Any, tasks: Sequence[Any], out: Path) -> ExportResult:
    require_onnx_extra()
    result = ExportResult(out, "onnx")
    pipe.model.backbone.tokenizer.save_pretrained(out / "tokenizer")
    for t in tasks:
        if t.generative:
            result.notes[t.name] = "a generation task: its decoding loop (generate) is not one graph; " \
                                   "use the transformers export"
            continue
        try:
            info = export_task_onnx(pipe, t, out / t.name)
        except NotStandard as exc:
            result.notes[t.name] = str(exc)
            continue
        result.written[t.name] = f"{t.name}/model.onnx"
        result.max_diff[t.name] = info["max_diff"]
    if not result.written:
        raise ConfigError("nothing to export as ONNX: " + "; ".join(f"{k}: {v}" for k, v in result.notes.items()))
    notes = [f"`{name}`: `{path}`, inputs/outputs in `{name}/onnx.json`; onnxruntime vs torch: largest "
             f"difference {result.max_diff[name]:.2e}" for name, path in result.written.items()]
    notes += [f"`{name}`: not exported ({why})" for name, why in result.notes.items()]
    _write_card(pipe, tasks, out, notes)
    _write_export_info(out, result)
    return result
