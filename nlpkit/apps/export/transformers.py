"""The transformers format: where a task's head computes what a standard ``AutoModelFor*`` head computes, OUT is a
plain Hugging Face folder that ``from_pretrained`` and ``pipeline()`` load. Which standard class that is, and how
the head's weights go onto it, each head says itself (``head.to_transformers``, nlpkit.sdk.heads); a plugin can
hand over the whole model instead (``Task.export_model``). Either way the model is checked here against nlpkit's
own outputs (logits within TOLERANCE at every real position, or the same generated texts) before anything is
written, and refused above it. Where no standard class fits, the task falls back to nlpkit's own format (raw.py)
and the model card says why."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ...sdk.errors import NotStandard
from ...sdk.heads.transformers_counterpart import require_encoder
from .card import write_card
from .raw import no_progress_bars, write_raw
from .result import TOLERANCE, ExportResult, write_export_info
from .samples import sample_batch, sample_inputs

#: the pipeline() task that loads each class, where the installed transformers has one (transformers 5
#: dropped the question-answering, translation and summarization pipelines)
PIPELINES = {"AutoModelForTokenClassification": "token-classification",
             "AutoModelForSequenceClassification": "text-classification",
             "AutoModelForMaskedLM": "fill-mask", "AutoModelForCausalLM": "text-generation"}


def export_transformers(pipe: Any, tasks: Sequence[Any], out: Path) -> ExportResult:
    """One task with a standard class: that model, its tokenizer and the card. Anything else (several tasks, no
    standard class, a check that failed): nlpkit's own format, with the reason per task in the card."""
    result = ExportResult(out, "transformers")
    if len(tasks) == 1:
        t = tasks[0]
        try:
            model, cls_name, diff = standard_model(pipe, t)
        except NotStandard as exc:
            result.notes[t.name] = str(exc)
        else:
            with no_progress_bars():
                model.save_pretrained(out)
            t.export_tokenizer(pipe.model.backbone.tokenizer).save_pretrained(out)
            result.written[t.name], result.max_diff[t.name] = cls_name, diff
            loads = PIPELINES.get(cls_name)
            how = f"`transformers.pipeline(\"{loads}\", model=OUT)` and `{cls_name}.from_pretrained(OUT)`" if loads \
                else f"`{cls_name}.from_pretrained(OUT)` (this transformers version has no pipeline for it)"
            checked = "the same generated text for the sample inputs" if cls_name == "AutoModelForSeq2SeqLM" \
                else f"largest output difference {diff:.2e}"
            notes = [f"`{t.name}`: {cls_name}: {how} load this folder; checked against nlpkit: {checked}"]
            write_card(pipe, tasks, out, notes)
            write_export_info(out, result)
            return result
    else:
        for t in tasks:
            result.notes[t.name] = "several tasks share one backbone: no single standard class holds them " \
                                   "(export one with --task NAME)"
    write_raw(pipe, tasks, out)
    for t in tasks:
        result.written[t.name] = "backbone + heads (safetensors)"
    notes = [f"`{name}`: no standard transformers class; {why}. Written: `backbone/` (AutoModel."
             "from_pretrained), `tokenizer/`, `heads.safetensors` (tensors named `<task>.<parameter>`) and "
             "`nlpkit.json` (label maps, options)" for name, why in result.notes.items()]
    write_card(pipe, tasks, out, notes)
    write_export_info(out, result)
    return result


def standard_model(pipe: Any, task: Any) -> tuple[Any, str, float]:
    """(transformers model with the task's weights, its Auto class name, measured difference), or
    NotStandard when no standard head computes the same function."""
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
    model, name = _counterpart(backbone, head, task)
    if name == "AutoModelForSeq2SeqLM":  # no logits without decoder inputs: the generated texts are compared
        return model, name, _check_generation(pipe, task, model)
    model.eval()
    diff = _compare(backbone, head, model, name)
    if not diff <= TOLERANCE:
        raise NotStandard(f"{name} on this {backbone.model.config.model_type} backbone does not reproduce the "
                          f"head (largest difference {diff:.3g} > {TOLERANCE:g})")
    return model, name, diff


def _counterpart(backbone: Any, head: Any, task: Any) -> tuple[Any, str]:
    """The head's own ``to_transformers``; a head without one has no standard class (on an encoder; on another
    backbone kind the message says that standard heads expect an encoder)."""
    to_transformers = getattr(head, "to_transformers", None)
    if to_transformers is None:
        require_encoder(backbone)
        raise NotStandard(f"head {type(head).__name__} has no standard transformers counterpart")
    return to_transformers(backbone, task)


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
