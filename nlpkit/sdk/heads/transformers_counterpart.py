"""What the shared heads need to become a standard transformers model (``head.to_transformers(backbone, task)``,
which ``nlpkit export --format transformers`` asks for).

A standard ``AutoModelFor*`` class is a base model plus a small head. Where an nlpkit head computes the same function,
the export builds that class from the backbone's config, loads the backbone's weights into its base model and copies
the head's layers onto the standard head; the export then compares the two on sample inputs and refuses the model
above its tolerance, so a mapping that is wrong for some architecture fails loudly instead of changing predictions.
A head that has no counterpart raises ``NotStandard`` with the reason, which the model card repeats. transformers is
imported only when an export asks.
"""
from __future__ import annotations

import copy
from typing import Any

from ..errors import NotStandard


def require_encoder(backbone: Any) -> None:
    """Standard classification, QA and multiple-choice classes sit on an encoder-only model."""
    if backbone.kind != "encoder":
        raise NotStandard(f"the head sits on the encoder of an {backbone.kind} backbone; standard "
                          "classes for this task expect an encoder-only model")


def head_config(backbone: Any, **changes: Any) -> Any:
    """A copy of the backbone's config with the head's settings (labels, problem type) on it."""
    config = copy.deepcopy(backbone.model.config)
    for key, value in changes.items():
        setattr(config, key, value)
    config.architectures = None
    return config


def label_config(task: Any) -> dict[str, Any]:
    """num_labels, id2label and label2id from the task's label map, so pipeline() names the labels as nlpkit does."""
    labels = list(task.state_dict().get("labels") or [])
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {lab: i for i, lab in enumerate(labels)}}


def with_backbone(auto_class: str, backbone: Any, config: Any) -> Any:
    """A standard model (``auto_class``, e.g. "AutoModelForTokenClassification") whose base model holds the
    backbone's weights (a pooler, if any, comes from the head)."""
    import transformers

    model = getattr(transformers, auto_class).from_config(config)
    missing, unexpected = model.base_model.load_state_dict(backbone.model.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.startswith("pooler.")]:
        raise NotStandard(f"{type(model).__name__} has another base model layout (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return model


def copy_linear(target: Any, source: Any) -> None:
    target.weight.data.copy_(source.weight.data)
    target.bias.data.copy_(source.bias.data)


def pooler_and_classifier(model: Any, dense: Any, out: Any) -> None:
    """BERT-style pooled heads: tanh(dense(CLS)) then a linear layer; RoBERTa keeps both in its classifier."""
    pooler = getattr(model.base_model, "pooler", None)
    if hasattr(model, "classifier") and hasattr(model.classifier, "out_proj"):  # RoBERTa sequence classification
        copy_linear(model.classifier.dense, dense)
        copy_linear(model.classifier.out_proj, out)
    elif pooler is not None and hasattr(model, "classifier"):
        copy_linear(pooler.dense, dense)
        copy_linear(model.classifier, out)
    else:
        raise NotStandard(f"{type(model).__name__} has no pooler + classifier to hold the head")
