"""Heads that several tasks share. A head is an ``nn.Module`` called as ``head(backbone, batch)``
and returns a dict with at least the outputs its task decodes, plus "loss" when the batch is labelled.
Plugins pick one of these or bring their own module with the same call signature. A head whose function a
standard transformers class computes builds that class with its weights (``to_transformers``, for
``nlpkit export``; the helpers are in ``transformers_counterpart``).
"""
from .causal_sft import CausalSftHead
from .classification import SequenceClassificationHead
from .entity_pair import EntityPairHead
from .multiple_choice import MultipleChoiceHead
from .seq2seq import Seq2SeqHead
from .span_extraction import SpanExtractionHead
from .token_classification import TokenClassificationHead

__all__ = ["CausalSftHead", "EntityPairHead", "MultipleChoiceHead", "SequenceClassificationHead", "Seq2SeqHead",
           "SpanExtractionHead", "TokenClassificationHead"]
