"""Denoising pretraining (BART's text infilling): rebuild a token block from a corrupted copy of it.

Raw text is read as a lazy corpus and packed into blocks of ``max_length`` tokens (``nlpkit.sdk.corpus``).
Each time a block is seen in training it is corrupted afresh (Lewis et al. 2020, "BART", section 2.2):

- text infilling: ``mask_ratio`` (0.3) of its tokens are covered by spans whose lengths are drawn from
  Poisson(``poisson_lambda`` = 3); each span is replaced by ONE mask token, and a span of length 0
  inserts a mask. The model must also tell how many tokens a mask hides;
- sentence permutation (``permute_sentences``, off by default): that share of the sentences of a block
  is shuffled, sentences ending at a token ending in . ! or ?.

Special tokens ([CLS]/[SEP], <s>/</s>, the separator between two documents of a block) are never masked
nor moved. The decoder is trained on the original block, teacher-forced, through the shared seq2seq
head: the backbone's own decoder on BART/T5, a decoder built with cross-attention on encoder-only
backbones and the from-scratch presets.

Where the noise comes from: in training it is drawn in the head's forward from torch's global RNG (one
seed per batch), which the trainer saves and restores, so a resumed run corrupts exactly as the
uninterrupted one. In evaluation it is drawn from a generator seeded by the block's index, so every
evaluation of a dev set sees the same corruption and dev perplexity is comparable between evaluations
and runs.

Spans are placed the way T5 places its noise spans, so they never overlap: exactly
``ceil(mask_ratio * n)`` of a block's ``n`` maskable tokens are covered. fairseq's DenoisingDataset
draws span starts independently, so its spans may overlap and cover fewer tokens than asked.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from nlpkit import register_task
from nlpkit.sdk import options as _options
from nlpkit.sdk.corpus import CorpusOptions, CorpusTask
from nlpkit.sdk.errors import BackboneError
from nlpkit.sdk.modeling import Modeling

from . import DATA_DIR

log = logging.getLogger("nlpkit.tasks.denoising")

#: mixed into the seed of every evaluation block, so evaluation noise is its own stream
EVAL_SEED = 20200
#: texts given to ``nlpkit predict`` may write a mask in either common spelling
MASK_SPELLINGS = ("<mask>", "[MASK]")
#: a token ending in one of these ends a sentence (for permute_sentences)
SENTENCE_END = (".", "!", "?")


@dataclass
class DenoisingOptions(CorpusOptions):
    #: block size in tokens, special tokens included
    max_length: int = 128
    #: share of a block's (non-special) tokens covered by masked spans
    mask_ratio: float = 0.3
    #: mean span length (spans of length 0 insert a mask)
    poisson_lambda: float = 3.0
    #: share of a block's sentences shuffled before masking (0: off; BART's best model used 1.0)
    permute_sentences: float = 0.0
    #: the mask token; None: the tokenizer's own ([MASK], <mask>), else T5's first sentinel <extra_id_0>.
    #: A token the tokenizer lacks is added to it (embeddings resized)
    mask_token: Optional[str] = None
    #: encoder-only backbones: decoder layers (default: as many as the encoder) and their dropout
    decoder_layers: Optional[int] = None
    dropout: float = 0.1
    label_smoothing: float = 0.0
    #: nlpkit predict: 1 = greedy search, more = beam search; longest output (default max_length)
    num_beams: int = 1
    max_new_tokens: Optional[int] = None

    def validate(self, key: str) -> None:
        super().validate(key)
        req = _options.require
        req(0 <= self.mask_ratio <= 1, f"{key}.mask_ratio", "must be in [0, 1]")
        req(0 < self.poisson_lambda <= 100, f"{key}.poisson_lambda", "must be in (0, 100]")
        req(0 <= self.permute_sentences <= 1, f"{key}.permute_sentences", "must be in [0, 1]")
        req(bool(self.text_field), f"{key}.text_field", "must not be empty")
        req(self.mask_token is None or bool(self.mask_token.strip()), f"{key}.mask_token", "must not be empty")
        req(self.decoder_layers is None or self.decoder_layers >= 1, f"{key}.decoder_layers", "must be >= 1")
        req(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        req(0 <= self.label_smoothing < 1, f"{key}.label_smoothing", "must be in [0, 1)")
        req(self.num_beams >= 1, f"{key}.num_beams", "must be >= 1")
        req(self.max_new_tokens is None or self.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1")


# ---- the noise: pure numpy on one block ------------------------------------------------------------
def span_lengths(budget: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson(lam) span lengths summing to ``budget``, in random order; zeros are insertions.

    As in fairseq: draw until the lengths reach the budget, cut the last one to fit, drop the rest."""
    lengths = rng.poisson(lam, budget)
    while lengths.sum() < budget:
        lengths = np.concatenate([lengths, rng.poisson(lam, budget)])
    total = np.cumsum(lengths)
    last = int(np.searchsorted(total, budget))  # the first span that reaches the budget
    lengths = lengths[: last + 1].copy()
    lengths[last] = budget - (total[last - 1] if last else 0)
    return rng.permutation(lengths)


def plan_spans(n: int, ratio: float, lam: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of non-overlapping spans over ``n`` tokens covering ``ceil(ratio * n)`` of them.

    The spans and the uncovered tokens are shuffled into one random order (T5's way of placing noise),
    so spans never overlap and the coverage is exact. A span of length 0 starting at ``n`` inserts at
    the end."""
    budget = math.ceil(n * ratio - 1e-9)
    if n == 0 or budget == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = span_lengths(budget, lam, rng)
    is_span = np.zeros(len(lengths) + n - budget, dtype=bool)
    is_span[rng.choice(len(is_span), len(lengths), replace=False)] = True
    step = np.ones(len(is_span), dtype=np.int64)
    step[is_span] = lengths
    starts = (np.cumsum(step) - step)[is_span]
    return starts, lengths.astype(np.int64)


def apply_spans(ids: np.ndarray, positions: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                mask_id: int) -> np.ndarray:
    """``ids`` with each span (over ``positions``, the maskable positions) replaced by one mask token.

    A span that crosses a special token (a document separator) keeps it and gets a mask on each side;
    two adjacent spans give two masks; a span of length 0 inserts a mask before the token it starts at."""
    n = len(positions)
    cover = np.zeros(n + 1, dtype=np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + lengths, -1)
    covered = np.zeros(len(ids), dtype=bool)
    covered[positions[np.cumsum(cover)[:n] > 0]] = True
    first = np.zeros(len(ids), dtype=bool)
    first[positions[starts[lengths > 0]]] = True
    first |= covered & ~np.concatenate([[False], covered[:-1]])  # a run resumed after a special token
    out = np.where(first, mask_id, ids)
    keep = ~covered | first
    inserts = starts[lengths == 0]
    if len(inserts):
        at = np.where(inserts < n, positions[np.minimum(inserts, n - 1)], positions[-1] + 1)
        out, keep = np.insert(out, at, mask_id), np.insert(keep, at, True)
    return out[keep]


def permute_sentences(ids: np.ndarray, maskable: np.ndarray, end_ids: np.ndarray, ratio: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Shuffle ``ceil(ratio * k)`` of the k sentences of each run of maskable tokens (fairseq's rule);
    special tokens stay where they are, so sentences never move across a document separator."""
    out = ids.copy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], maskable.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        run = ids[a:b]
        is_end = np.isin(run, end_ids)
        cuts = np.flatnonzero(is_end & ~np.concatenate([is_end[1:], [False]])) + 1  # after the last of ". . ."
        bounds = np.unique(np.concatenate([[0], cuts, [len(run)]]))
        sentences = [run[s:e] for s, e in zip(bounds[:-1], bounds[1:])]
        chosen = math.ceil(len(sentences) * ratio - 1e-9)
        if chosen < 2:
            continue
        picked = rng.choice(len(sentences), chosen, replace=False)
        order = np.arange(len(sentences))
        order[picked] = picked[rng.permutation(chosen)]
        out[a:b] = np.concatenate([sentences[k] for k in order])
    return out


@dataclass(frozen=True)
class TextInfilling:
    """BART's noise for one block: sentence permutation (optional), then text infilling."""

    mask_id: int
    special_ids: np.ndarray  # never masked nor moved
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_ratio: float = 0.0
    sentence_end_ids: Optional[np.ndarray] = None

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        maskable = ~np.isin(ids, self.special_ids)
        if self.permute_ratio > 0 and self.sentence_end_ids is not None:
            ids = permute_sentences(ids, maskable, self.sentence_end_ids, self.permute_ratio, rng)
        positions = np.flatnonzero(maskable)
        starts, lengths = plan_spans(len(positions), self.mask_ratio, self.poisson_lambda, rng)
        return apply_spans(ids, positions, starts, lengths, self.mask_id)


def eval_rng(block_index: int) -> np.random.Generator:
    """The generator of one evaluation block: the same noise at every evaluation, on every process."""
    return np.random.default_rng([EVAL_SEED, int(block_index)])


# ---- the head -------------------------------------------------------------------------------------
def _denoising_head(backbone: Any, noise: TextInfilling, frame: tuple[int, int], options: DenoisingOptions,
                    max_new_tokens: int) -> Any:
    """The shared seq2seq head with the corruption in front of it (a module class defined on first use,
    so importing this plugin does not import torch)."""
    import torch
    from torch import nn

    from nlpkit.sdk.data import pad, pad_encodings
    from nlpkit.sdk.heads.seq2seq import Seq2SeqHead

    class DenoisingHead(nn.Module):
        """Corrupts the clean blocks of a batch, then trains (or scores) the seq2seq head on them.

        Its weights are the seq2seq head's (none on an encoder-decoder backbone: the model's own decoder)."""

        def __init__(self) -> None:
            super().__init__()
            positions = max(512, options.max_length + 1, max_new_tokens + 1)
            self.seq2seq = Seq2SeqHead(backbone, options.decoder_layers, options.dropout, options.label_smoothing,
                                       positions)
            self.tokens = self.seq2seq.tokens
            self.encoder_decoder = self.seq2seq.encoder_decoder

        def target(self, clean: np.ndarray) -> np.ndarray:
            """What the decoder must produce: the tokenizer's own target format on an encoder-decoder
            (the framed block: BART ``<s> x </s>``, T5 ``x </s>``), ``x [EOS]`` on the built decoder."""
            if self.encoder_decoder:
                return clean
            return np.append(clean[frame[0]: len(clean) - frame[1]], self.tokens.eos)

        def corrupt(self, batch: dict) -> dict:
            """Noisy sources and clean labels for a batch of clean blocks (noise drawn on the CPU)."""
            ids = batch["input_ids"].cpu().numpy()
            lengths = batch["attention_mask"].sum(1).cpu().numpy()
            if self.training:  # torch's global RNG: saved and restored by the trainer, so resume is exact
                rngs: Iterable[np.random.Generator] = itertools.repeat(
                    np.random.default_rng(int(torch.randint(0, 2**62, ()))))
            else:
                rngs = [eval_rng(b) for b in batch["block_index"].tolist()]
            sources, targets = [], []
            for row, n, rng in zip(ids, lengths, rngs):
                clean = row[: int(n)]
                sources.append(noise(clean, rng))
                targets.append(self.target(clean))
            device = batch["input_ids"].device
            out = pad_encodings([{"input_ids": s} for s in sources], self.tokens.pad)
            out["labels"] = pad(targets, -100)
            return {k: v.to(device) for k, v in out.items()}

        def forward(self, backbone: nn.Module, batch: dict) -> dict:
            noisy = self.corrupt(batch)
            out = self.seq2seq(backbone, noisy)
            return {**out, "labels": noisy["labels"]}

        def generate(self, backbone: nn.Module, batch: dict, **kwargs: Any) -> Any:
            return self.seq2seq.generate(backbone, batch, **kwargs)

    return DenoisingHead()


# ---- tokenizer facts ------------------------------------------------------------------------------
def text_frame(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special tokens the tokenizer puts around one text: ([CLS],), ([SEP],) for BERT; (<s>,), (</s>,)
    for BART; (), (</s>,) for T5. Blocks are framed the same way, so they look like the model's inputs."""
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a")["input_ids"])
    for at in range(len(full) - len(bare) + 1):
        if full[at: at + len(bare)] == bare:
            return tuple(full[:at]), tuple(full[at + len(bare):])
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return tuple(x for x in [start] if x is not None), tuple(x for x in [end] if x is not None)


def find_mask_token(tokenizer: Any, wanted: str | None) -> tuple[str, int]:
    """The mask token and its id: the option's, the tokenizer's own, or T5's first sentinel."""
    if wanted is not None:
        token_id = tokenizer.convert_tokens_to_ids(wanted)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise BackboneError(f"denoising: the mask token {wanted!r} is not in the tokenizer's vocabulary")
        return wanted, int(token_id)
    if tokenizer.mask_token_id is not None:
        return str(tokenizer.mask_token), int(tokenizer.mask_token_id)
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    if sentinel is not None and sentinel != tokenizer.unk_token_id:
        return "<extra_id_0>", int(sentinel)
    raise BackboneError("denoising: the backbone's tokenizer has no mask token (nor T5's <extra_id_0>); "
                        "set the option mask_token (e.g. mask_token=<mask>) to add one")


def sentence_end_ids(tokenizer: Any) -> np.ndarray:
    """Ids of the tokens that end a sentence: their text ends in . ! or ? (``Ġ.``, ``▁.``, ``##.`` too)."""
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return np.array([i for i, t in enumerate(tokens)
                     if i not in special and t is not None and t.rstrip().endswith(SENTENCE_END)], dtype=np.int64)


# ---- the plugin -----------------------------------------------------------------------------------
@register_task("denoising")
class DenoisingTask(CorpusTask):
    description = "denoising pretraining (BART text infilling) on raw text; perplexity and token accuracy"
    Options = DenoisingOptions
    main_score = "accuracy"
    curve_metric = "perplexity"
    backbone_kinds = ("encoder-decoder", "encoder")

    # ---- data -------------------------------------------------------------------------------------
    def default_data(self) -> dict[str, str]:
        folder = DATA_DIR / "pretraining"
        return {"train": str(folder / "train.txt"), "dev": str(folder / "dev.txt")}

    # ---- the model ------------------------------------------------------------------------------------
    def special_tokens(self) -> list[str]:
        return [self.options.mask_token] if self.options.mask_token else []

    def modeling(self) -> Modeling:
        return DenoisingModeling(self.name, self.options)

    # ---- metrics ----------------------------------------------------------------------------------
    def score(self, predictions: Sequence[dict], examples: Any) -> dict[str, Any]:
        """Teacher-forced perplexity of the original blocks given their corrupted copies, and the share of
        target tokens predicted exactly (percent; the main score: bounded, higher is better)."""
        nll = sum(p["nll"] for p in predictions)
        tokens = sum(p["tokens"] for p in predictions)
        correct = sum(p["correct"] for p in predictions)
        if not tokens:
            return {"accuracy": 0.0, "perplexity": None, "loss": None, "tokens": 0}
        loss = nll / tokens
        return {"accuracy": 100.0 * correct / tokens, "perplexity": math.exp(min(loss, 700.0)), "loss": loss,
                "tokens": tokens}

    # ---- raw input --------------------------------------------------------------------------------
    def parse_input(self, item: str | dict) -> dict:
        """A text with mask tokens (the tokenizer's, or written <mask> / [MASK]); predict fills them."""
        from nlpkit.sdk.data import input_text

        field = self.options.text_field
        if isinstance(item, dict):
            item = item.get(field, item.get("text"))
        return {"text": input_text(item, field), "predict": True}

    def format_prediction(self, prediction: dict) -> str:
        if "text" in prediction:
            return prediction["text"]
        return super().format_prediction(prediction)


class DenoisingModeling(Modeling):
    """Clean blocks of a corpus corrupted by the head (text infilling) and restored, or the masks of a text filled."""

    generates_text = True

    def __init__(self, name: str, options: Any):
        self.name, self.options = name, options

    def setup(self, backbone: Any) -> None:
        from nlpkit.sdk.heads.seq2seq import target_tokens

        super().setup(backbone)
        o, tok = self.options, self.tokenizer
        self.tokens = target_tokens(backbone)  # start, end and padding ids, as the seq2seq head uses them
        self.mask_token, mask_id = find_mask_token(tok, o.mask_token)
        self.frame = text_frame(tok)
        special = np.array(sorted(set(tok.all_special_ids) | {mask_id}), dtype=np.int64)
        ends = sentence_end_ids(tok) if o.permute_sentences > 0 else None
        self.noise = TextInfilling(mask_id, special, o.mask_ratio, o.poisson_lambda, o.permute_sentences, ends)

    @property
    def max_new_tokens(self) -> int:
        return self.options.max_new_tokens or self.options.max_length

    def build_head(self, backbone: Any) -> Any:
        return _denoising_head(backbone, self.noise, (len(self.frame[0]), len(self.frame[1])), self.options,
                               self.max_new_tokens)

    def encode(self, examples: Any) -> Any:
        """Blocks of the corpus (clean: the head corrupts them), or, for predict, one feature per text."""
        if _inputs(examples):
            return self._encode_inputs(examples)
        from nlpkit.sdk.corpus import pack

        o = self.options
        return pack(examples, self.tokenizer, o.max_length, within_document=o.within_document,
                    prefix_ids=self.frame[0], suffix_ids=self.frame[1])

    def _encode_inputs(self, examples: Sequence[dict]) -> list[dict]:
        texts = [ex["text"] for ex in examples]
        for spelling in MASK_SPELLINGS:
            if spelling != self.mask_token:
                texts = [t.replace(spelling, self.mask_token) for t in texts]
        ids = self.tokenizer(texts, truncation=True, max_length=self.options.max_length)["input_ids"]
        cut = sum(len(i) >= self.options.max_length for i in ids)
        if cut:
            log.warning(f"{self.name}: {cut} input(s) reached max_length={self.options.max_length} tokens and may "
                        "have been truncated")
        return [{"example_index": i, "input_ids": x, "predict": True} for i, x in enumerate(ids)]

    def collate(self, features: Sequence[dict]) -> dict:
        import torch

        from nlpkit.sdk.data import pad_encodings

        batch: dict[str, Any] = pad_encodings(features, self.tokens.pad)
        if features[0].get("predict"):
            batch["predict"] = True
        else:
            batch["block_index"] = torch.tensor([int(f["block_index"]) for f in features])
        return batch

    def predict_batch(self, head: Any, backbone: Any, batch: dict) -> list[dict]:
        if batch.get("predict"):
            return self._generate(head, backbone, batch)
        import torch.nn.functional as F

        out = head(backbone, batch)  # in eval mode: the blocks' own fixed noise
        logits, labels = out["logits"].float(), out["labels"]
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        valid = labels != -100
        correct = (logits.argmax(-1) == labels) & valid
        return [{"nll": float(nll[i].sum()), "tokens": int(valid[i].sum()), "correct": int(correct[i].sum())}
                for i in range(labels.size(0))]

    def _generate(self, head: Any, backbone: Any, batch: dict) -> list[dict]:
        eos, pad = head.tokens.eos, head.tokens.pad
        rows = head.generate(backbone, batch, num_beams=self.options.num_beams,
                             max_new_tokens=self.max_new_tokens).cpu().tolist()
        results = []
        for row in rows:
            ids = row[: row.index(eos)] if eos in row else [t for t in row if t != pad]
            results.append({"ids": ids, "at_limit": eos not in row and len(row) >= self.max_new_tokens})
        return results

    def decode(self, examples: Any, features: Any, outputs: Sequence[dict]) -> list[dict]:
        """Predict: the filled text of each input. Evaluation: per document, the sums of its blocks."""
        if outputs and "ids" in outputs[0]:
            return [{"text": self.tokenizer.decode(o["ids"], skip_special_tokens=True,
                                                   clean_up_tokenization_spaces=False).strip(),
                     "tokens": len(o["ids"]), "at_limit": o["at_limit"]} for o in outputs]
        totals = [{"nll": 0.0, "tokens": 0, "correct": 0} for _ in range(len(examples))]
        for i, out in enumerate(outputs):
            doc = totals[int(features[i]["example_index"])]
            for key in doc:
                doc[key] += out[key]
        return totals


def _inputs(examples: Any) -> bool:
    """True for texts given to predict (parse_input marks them), False for a corpus."""
    return isinstance(examples, list) and bool(examples) and bool(examples[0].get("predict"))
