"""Masked language modelling (BERT's pretraining objective) on raw text, for encoder backbones.

Three uses, one plugin: pretraining a from-scratch preset, continued ("domain-adaptive") pretraining of a
pretrained encoder on the user's own text, and an auxiliary task beside a supervised one in a multi-task
run. Raw text comes in as a lazy ``nlpkit.sdk.corpus.TextCorpus`` (never a Python list of a corpus's text)
and is packed into fixed-length blocks ``[CLS] ... [SEP]`` from a memory-mapped token cache.

Masking follows BERT and transformers' ``DataCollatorForLanguageModeling`` (the run_mlm.py recipe):
``mlm_probability`` of the real, non-special tokens are chosen (with ``whole_word_mask``, whole words are
chosen at their first piece and every piece of a chosen word is masked, as ``DataCollatorForWholeWordMask``
does); of those, ``mask_replace_prob`` become the mask token, ``random_replace_prob`` a random token and
the rest stay as they are. It happens in the head, not in the collator: in training from torch's global
generator (which the trainer checkpoints, so a resumed run masks exactly as an uninterrupted one), in
evaluation from a generator seeded by each block's index (so dev perplexity is comparable between
evaluations and runs). Random replacements are drawn from the non-special vocabulary (transformers draws
from the whole vocabulary, special tokens included).

The output projection is the backbone's input embedding matrix, read at forward time: tied weights with
no second copy in the checkpoint (safetensors refuses shared tensors). It is applied only at the masked
positions (about 15% of the tokens), which saves most of the vocabulary projection's FLOPs. When the
backbone's own folder holds BERT's MLM head (``cls.predictions.*``), the head starts from it.

Scores: perplexity exp(mean masked-token NLL) and masked-token accuracy (the main score: bounded and
higher-is-better, so it mixes with other tasks' scores in multi-task model selection).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nlpkit import ConfigError, DataError, register_task
from nlpkit.sdk.corpus import CorpusOptions, CorpusTask
from nlpkit.sdk.data import input_text, pad, pad_encodings
from nlpkit.sdk.modeling import Modeling
from nlpkit.sdk.options import require

from . import DATA_DIR

log = logging.getLogger("nlpkit.tasks.masked_lm")

#: added to a block's index to seed its evaluation masks (any constant; fixed so scores stay comparable)
EVAL_SEED = 1_000_003
#: uniform draws per position: (chosen?, mask/random/keep, which random token)
DRAWS = 3


@dataclass
class MaskedLmOptions(CorpusOptions):
    #: block size in tokens, [CLS] and [SEP] included (BERT pretrained at 128, then 512)
    max_length: int = 128
    #: fraction of the real, non-special tokens chosen for prediction
    mlm_probability: float = 0.15
    #: of the chosen tokens: replaced by the mask token ...
    mask_replace_prob: float = 0.8
    #: ... or by a random token; the rest (1 - both) are left as they are (BERT's 80/10/10)
    random_replace_prob: float = 0.1
    #: choose whole words and mask all their pieces (word starts come from the tokenizer's word ids)
    whole_word_mask: bool = False
    #: fills returned per mask by predict
    top_k: int = 5

    def validate(self, key: str) -> None:
        super().validate(key)
        require(0 < self.mlm_probability < 1, f"{key}.mlm_probability", "must be between 0 and 1 (exclusive)")
        require(0 <= self.mask_replace_prob <= 1, f"{key}.mask_replace_prob", "must be between 0 and 1")
        require(0 <= self.random_replace_prob <= 1, f"{key}.random_replace_prob", "must be between 0 and 1")
        require(self.mask_replace_prob + self.random_replace_prob <= 1 + 1e-9, f"{key}.random_replace_prob",
                f"mask_replace_prob + random_replace_prob must be at most 1 (the rest is kept unchanged), got "
                f"{self.mask_replace_prob:g} + {self.random_replace_prob:g}")
        require(1 <= self.top_k <= 100, f"{key}.top_k", "must be between 1 and 100")
        require(bool(self.text_field), f"{key}.text_field", "must not be empty")


# ---- masking -----------------------------------------------------------------------------------------
def choose_masks(input_ids: torch.Tensor, eligible: torch.Tensor, draws: torch.Tensor, options: MaskedLmOptions,
                 mask_id: int, candidates: torch.Tensor, word_start: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted input_ids, chosen positions) for one batch, from uniform ``draws`` (batch, length, 3).

    Pure given the draws, so training (global generator) and evaluation (a generator per block) share it.
    ``eligible``: real, non-special positions. ``word_start``: with whole-word masking, where words begin;
    a piece right after a special token (a block that starts mid-word) begins a word of its own.
    """
    chosen_draw = draws[..., 0] < options.mlm_probability
    if options.whole_word_mask and word_start is not None:
        after_ineligible = torch.ones_like(eligible)
        after_ineligible[:, 1:] = ~eligible[:, :-1]
        first = eligible & (word_start.bool() | after_ineligible)
        positions = torch.arange(input_ids.size(1), device=input_ids.device).expand_as(input_ids)
        word_of = torch.where(first, positions, torch.full_like(positions, -1)).cummax(dim=1).values
        chosen = (chosen_draw & first).gather(1, word_of.clamp(min=0)) & (word_of >= 0) & eligible
    else:
        chosen = chosen_draw & eligible
    kind = draws[..., 1]
    to_mask = chosen & (kind < options.mask_replace_prob)
    to_random = chosen & ~to_mask & (kind < options.mask_replace_prob + options.random_replace_prob)
    random_ids = candidates[(draws[..., 2] * len(candidates)).long().clamp(max=len(candidates) - 1)]
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, chosen


def eval_draws(block_index: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Draws for evaluation: one generator per block, seeded by its index, always drawing ``block_size``
    positions (then cut), so a block's masks do not depend on which blocks share its batch."""
    rows = []
    for index in block_index.tolist():
        generator = torch.Generator().manual_seed(EVAL_SEED + int(index))
        rows.append(torch.rand(max(length, block_size), DRAWS, generator=generator)[:length])
    return torch.stack(rows)


# ---- the head ----------------------------------------------------------------------------------------
class MaskedLmHead(nn.Module):
    """BERT's MLM transform (dense, activation, LayerNorm) and an output bias; the decoder weight is the
    backbone's input embedding matrix, read at forward time (tied, never a second tensor)."""

    def __init__(self, hidden_size: int, embedding_size: int, vocab_rows: int, activation: str,
                 layer_norm_eps: float, init_range: float, options: MaskedLmOptions, mask_id: int,
                 special_ids: Sequence[int], vocab_size: int):
        super().__init__()
        from transformers.activations import ACT2FN

        self.options, self.mask_id = options, mask_id
        self.dense = nn.Linear(hidden_size, embedding_size)
        self.act = ACT2FN[activation] if isinstance(activation, str) else nn.GELU()
        self.norm = nn.LayerNorm(embedding_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_rows))
        nn.init.normal_(self.dense.weight, std=init_range)
        nn.init.zeros_(self.dense.bias)
        special = torch.zeros(vocab_rows, dtype=torch.bool)
        special[[i for i in special_ids if 0 <= i < vocab_rows]] = True
        special[vocab_size:] = True  # embedding rows past the tokenizer's vocabulary (padding to a multiple)
        # derived from the tokenizer at build time: not weights, so not in the checkpoint
        self.register_buffer("special", special, persistent=False)
        self.register_buffer("candidates", torch.nonzero(~special).flatten(), persistent=False)

    def logits(self, backbone: Any, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (fp32) of some hidden states (n, hidden)."""
        weight = backbone.model.get_input_embeddings().weight
        return F.linear(self.norm(self.act(self.dense(hidden))), weight, self.bias).float()

    def forward(self, backbone: Any, batch: dict) -> dict:
        ids, attention = batch["input_ids"], batch["attention_mask"]
        eligible = attention.bool() & ~self.special[ids]
        if self.training:
            draws = torch.rand(*ids.shape, DRAWS, device=ids.device)
        else:
            draws = eval_draws(batch["block_index"], ids.size(1), self.options.max_length).to(ids.device)
        corrupted, chosen = choose_masks(ids, eligible, draws, self.options, self.mask_id, self.candidates,
                                         batch.get("word_start"))
        hidden = backbone.encode(corrupted, attention)
        rows, cols = chosen.nonzero(as_tuple=True)
        weights = torch.ones(len(rows), device=ids.device)
        if len(rows) == 0:  # nothing chosen (tiny blocks): one position at zero weight keeps the graph whole
            rows = cols = torch.zeros(1, dtype=torch.long, device=ids.device)
            weights = torch.zeros(1, device=ids.device)
        # the vocabulary projection only where a token is predicted: ~15% of the positions
        logits = self.logits(backbone, hidden[rows, cols])
        labels = ids[rows, cols]
        nll = F.cross_entropy(logits, labels, reduction="none") * weights
        return {"loss": nll.sum() / weights.sum().clamp(min=1), "nll": nll, "labels": labels, "rows": rows,
                "cols": cols, "weights": weights, "logits": logits}

    def fill(self, backbone: Any, batch: dict, k: int) -> list[list[list[tuple[int, float]]]]:
        """Top-k (token id, probability) at every mask token of each row, special tokens excluded."""
        ids = batch["input_ids"]
        hidden = backbone.encode(ids, batch["attention_mask"])
        rows, cols = (ids == self.mask_id).nonzero(as_tuple=True)
        out: list[list[list[tuple[int, float]]]] = [[] for _ in range(ids.size(0))]
        if len(rows) == 0:
            return out
        logits = self.logits(backbone, hidden[rows, cols]).masked_fill(self.special, float("-inf"))
        probs, top = logits.softmax(-1).topk(min(k, len(self.candidates)), dim=-1)
        for r, p, t in zip(rows.tolist(), probs.tolist(), top.tolist()):
            out[r].append(list(zip(t, p)))
        return out


def special_ids(tokenizer: Any) -> list[int]:
    """Every id that is a special token: the named ones and added tokens marked special (entity markers)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special)
    return sorted(ids)


#: BERT's MLM head in a BertForMaskedLM checkpoint -> our head's parameter names
PRETRAINED_KEYS = {
    "cls.predictions.transform.dense.weight": "dense.weight",
    "cls.predictions.transform.dense.bias": "dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "norm.weight",
    "cls.predictions.transform.LayerNorm.gamma": "norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "norm.bias",
    "cls.predictions.transform.LayerNorm.beta": "norm.bias",
    "cls.predictions.bias": "bias",
}


def load_pretrained_head(head: Any, backbone: Any) -> list[str]:
    """Copy BERT's MLM head weights (``cls.predictions.*``) into ``head`` when the backbone has them.

    The output bias is copied for the rows both have (added special tokens get 0). Returns what was loaded.
    """
    from safetensors import safe_open

    path = backbone.source_file("model.safetensors")
    if path is None:
        return []
    own = head.state_dict()
    found: dict[str, Any] = {}
    try:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key in PRETRAINED_KEYS:
                    found[PRETRAINED_KEYS[key]] = f.get_tensor(key)
    except Exception:  # noqa: BLE001 - an unreadable file: the backbone loader would have said so already
        return []
    if set(found) != {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"} or any(
            found[k].shape != own[k].shape for k in found if k != "bias"):
        return []
    with torch.no_grad():
        for key, value in found.items():
            target = own[key]
            n = min(len(target), len(value))  # the bias: rows both vocabularies have
            target[:n].copy_(value[:n].to(target.dtype))
    return sorted(found)


def bert_for_masked_lm(backbone: Any, head: MaskedLmHead) -> tuple[Any, str]:
    """A BertForMaskedLM holding a BERT backbone and its masked-LM head (the export of ``masked-lm``)."""
    import copy

    from transformers import BertForMaskedLM

    config = copy.deepcopy(backbone.model.config)
    config.architectures, config.tie_word_embeddings, config.is_decoder = None, True, False
    model = BertForMaskedLM(config)
    weights = {k: v for k, v in backbone.model.state_dict().items() if not k.startswith("pooler.")}
    model.bert.load_state_dict(weights)  # strict: the same BertModel, without the pooler MLM never uses
    predictions = model.cls.predictions
    with torch.no_grad():
        for target, source in ((predictions.transform.dense, head.dense), (predictions.transform.LayerNorm, head.norm)):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
        predictions.bias.copy_(head.bias)
        predictions.decoder.bias.copy_(head.bias)  # the same tensor once tied; copied in case it is not
    return model, "AutoModelForMaskedLM"


# ---- the plugin --------------------------------------------------------------------------------------
@register_task("masked-lm")
class MaskedLmTask(CorpusTask):
    sample_inputs = ["Paris is the [MASK] of France .", "The river [MASK] past the old mills toward the [MASK] ."]
    description = "masked-LM pretraining on raw text (15% masking, 80/10/10, whole-word option; perplexity)"
    Options = MaskedLmOptions
    main_score = "accuracy"
    curve_metric = "perplexity"
    backbone_kinds = ("encoder",)

    # ---- data ----------------------------------------------------------------------------------------
    def default_data(self) -> dict[str, str]:
        folder = DATA_DIR / "pretraining"
        return {"train": str(folder / "train.txt"), "dev": str(folder / "dev.txt")}

    # ---- the model ------------------------------------------------------------------------------------
    def modeling(self) -> Modeling:
        return MaskedLmModeling(self.name, self.options)

    def score(self, predictions: Sequence[dict], examples: Sequence[dict]) -> dict[str, Any]:
        nll = sum(p["nll"] for p in predictions)
        tokens = sum(p["tokens"] for p in predictions)
        correct = sum(p["correct"] for p in predictions)
        if tokens == 0:
            return {"accuracy": 0.0, "perplexity": math.nan, "loss": math.nan, "tokens": 0}
        mean = nll / tokens
        return {"accuracy": 100.0 * correct / tokens, "perplexity": math.exp(mean) if mean < 700 else math.inf,
                "loss": mean, "tokens": tokens}

    # ---- raw input -----------------------------------------------------------------------------------
    def parse_input(self, item: str | dict) -> dict:
        """A text with the tokenizer's mask token where a word should be predicted."""
        text = input_text(item.get("text") if isinstance(item, dict) else item, "text")
        mask = self.tokenizer.mask_token if self.tokenizer is not None else "[MASK]"
        if mask not in text:
            raise DataError(f"the input has no {mask}: masked-LM predicts the token at each {mask}, e.g. "
                            f"\"Paris is the {mask} of France.\"")
        return {"text": text, "fill_mask": True}

    def format_prediction(self, prediction: dict) -> str:
        if "masks" not in prediction:
            return f"perplexity over {prediction['tokens']} masked tokens: nll {prediction['nll']:.3f}"
        lines = [prediction["filled"]]
        for k, options in enumerate(prediction["masks"], 1):
            shown = "  ".join(f"{o['token']} ({o['probability']:.2f})" for o in options)
            lines.append(f"  {self.tokenizer.mask_token if self.tokenizer else 'mask'} {k}: {shown}")
        return "\n".join(lines)


class MaskedLmModeling(Modeling):
    """Blocks of a corpus masked by the head (15%, 80/10/10) and scored, or the masks of a text filled."""

    def __init__(self, name: str, options: Any):
        self.name, self.options = name, options

    def setup(self, backbone: Any) -> None:
        super().setup(backbone)
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"task {self.name!r}: the backbone's tokenizer has no mask token, which masked-LM "
                            "needs; use a BERT-style encoder or a from-scratch preset")

    def frame(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """([CLS],), ([SEP],) around each block (BOS/EOS where a tokenizer names those instead)."""
        tok = self.tokenizer
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        return (() if first is None else (first,)), (() if last is None else (last,))

    def encode(self, examples: Any) -> Sequence[dict]:
        """Token blocks of a corpus (lazy, from the cache); for texts given to predict, one feature each."""
        if _are_queries(examples):
            return self._encode_queries(examples)
        from nlpkit.sdk.corpus import pack

        prefix, suffix = self.frame()
        return pack(examples, self.tokenizer, self.options.max_length, within_document=self.options.within_document,
                    prefix_ids=prefix, suffix_ids=suffix, word_starts=self.options.whole_word_mask)

    def _encode_queries(self, examples: Sequence[dict]) -> list[dict]:
        mask = self.tokenizer.mask_token
        # the mask stands for a whole token with its leading space (byte-level BPE: "Ġcapital"), as in
        # training, so the space before it goes with it (what RoBERTa's <mask> does with lstrip)
        before_mask = re.compile(r"\s+(?=" + re.escape(mask) + ")")
        enc = self.tokenizer([before_mask.sub("", ex["text"]) for ex in examples], truncation=True,
                             max_length=self.options.max_length)
        features = []
        for i, ex in enumerate(examples):
            ids = enc["input_ids"][i]
            if ids.count(self.tokenizer.mask_token_id) < ex["text"].count(mask):
                raise DataError(f"input {i + 1}: a {mask} lies beyond max_length={self.options.max_length} tokens "
                                "and was cut; shorten the text or raise the option max_length")
            features.append({"example_index": i, "input_ids": ids, "fill": True})
        return features

    def collate(self, features: Sequence[dict]) -> dict:
        """Padded to the longest block (blocks are full but the last): no masking here, the head masks."""
        batch = pad_encodings(features, self.tokenizer.pad_token_id)
        if features[0].get("fill"):
            batch["fill"] = True
            return batch
        batch["block_index"] = torch.tensor([int(f["block_index"]) for f in features])
        if "word_start" in features[0]:
            batch["word_start"] = pad([f["word_start"] for f in features], 0, dtype=torch.bool)
        return batch

    def build_head(self, backbone: Any) -> Any:
        config = backbone.model.config
        weight = backbone.model.get_input_embeddings().weight
        head = MaskedLmHead(
            hidden_size=backbone.hidden_size, embedding_size=weight.shape[1], vocab_rows=weight.shape[0],
            activation=getattr(config, "hidden_act", "gelu"), layer_norm_eps=getattr(config, "layer_norm_eps", 1e-12),
            init_range=getattr(config, "initializer_range", 0.02), options=self.options,
            mask_id=self.tokenizer.mask_token_id, special_ids=special_ids(self.tokenizer),
            vocab_size=len(self.tokenizer))
        loaded = load_pretrained_head(head, backbone)
        if loaded:
            log.info(f"{self.name}: MLM head initialised from the pretrained weights of {backbone.spec} "
                     "(cls.predictions.*)")
        return head

    # ---- export --------------------------------------------------------------------------------------
    def export_model(self, backbone: Any, head: Any) -> Optional[tuple[Any, str]]:
        """On a BERT-family backbone the head IS BertForMaskedLM's: the backbone goes into ``.bert``, the
        transform into ``cls.predictions.transform``, the bias into ``cls.predictions.bias``, and the decoder
        stays tied to the word embeddings; ``pipeline("fill-mask")`` then loads the export. Other encoders:
        None (the core's fallback, backbone + head tensors)."""
        return bert_for_masked_lm(backbone, head) if backbone.model.config.model_type == "bert" else None

    def export_tokenizer(self, tokenizer: Any) -> Any:
        """A copy whose mask token takes the space before it (``lstrip``, as RoBERTa's <mask>), as ``predict``
        reads a mask: the pipeline then fills "Paris is the [MASK] of France." with nlpkit's ids (a byte-level
        BPE would otherwise put a lone space token before the mask; WordPiece has none either way)."""
        import copy

        from tokenizers import AddedToken

        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_special_tokens({"mask_token": AddedToken(tokenizer.mask_token, lstrip=True, special=True,
                                                              normalized=False)})
        return tokenizer

    def export_logits(self, backbone: Any, head: Any, batch: dict) -> torch.Tensor:
        """The vocabulary projection at every position of an unmasked batch (training projects only the
        chosen positions of a masked one; the function at each position is the same)."""
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return head.logits(backbone, hidden)

    def predict_batch(self, head: Any, backbone: Any, batch: dict) -> list:
        """Per block: (summed NLL, masked tokens, argmax hits); per predict text: the top-k fills per mask."""
        if batch.get("fill"):
            return head.fill(backbone, batch, self.options.top_k)
        out = head(backbone, batch)
        n = batch["input_ids"].size(0)
        rows, weights = out["rows"], out["weights"]
        hits = (out["logits"].argmax(-1) == out["labels"]).float() * weights
        sums = torch.zeros(3, n, dtype=torch.float64, device=rows.device)
        sums[0].index_add_(0, rows, out["nll"].double())
        sums[1].index_add_(0, rows, weights.double())
        sums[2].index_add_(0, rows, hits.double())
        nll, tokens, correct = sums.cpu().tolist()
        return [(nll[i], int(tokens[i]), int(correct[i])) for i in range(n)]

    # ---- decoding and scoring ------------------------------------------------------------------------
    def decode(self, examples: Sequence[dict], features: Sequence[dict], outputs: Sequence[Any]) -> list[dict]:
        if _are_queries(examples):
            return [self._fills(ex, fills) for ex, fills in zip(examples, outputs)]
        totals = np.zeros((len(examples), 3), dtype=np.float64)
        for feature, (nll, tokens, correct) in zip(features, outputs):
            totals[feature["example_index"]] += (nll, tokens, correct)
        return [{"nll": float(t[0]), "tokens": int(t[1]), "correct": int(t[2])} for t in totals]

    def _fills(self, example: dict, fills: list[list[tuple[int, float]]]) -> dict:
        masks = [[{"token": self._token_text(i), "id": int(i), "probability": float(p)} for i, p in options]
                 for options in fills]
        mask, filled = self.tokenizer.mask_token, example["text"]
        for options in masks:  # the top fill in place of each mask, left to right
            filled = filled.replace(mask, options[0]["token"] if options else mask, 1)
        return {"text": example["text"], "filled": filled, "masks": masks}

    def _token_text(self, token_id: int) -> str:
        """A token as text ("capital", not "Ġcapital"); one that is only white space as the token itself."""
        return self.tokenizer.decode([token_id]).strip() or self.tokenizer.convert_ids_to_tokens(int(token_id))


def _are_queries(examples: Any) -> bool:
    """Texts from parse_input (fill the masks) rather than a corpus (score the model)."""
    return isinstance(examples, list) and bool(examples) and all(
        isinstance(ex, dict) and ex.get("fill_mask") for ex in examples)
