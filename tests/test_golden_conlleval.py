"""The NER score equals conlleval's: a line-by-line port of conlleval.pl's chunk counting (the official
CoNLL-2000/2003 scorer) is run on fixed and random tag sequences and compared with our metric."""
import random

import pytest

from nlpkit_tasks.ner import NerTask


def _split(tag):
    return ("O", "") if tag == "O" else (tag[0], tag[2:])


def _end_of_chunk(prev_tag, tag, prev_type, type_):
    return (prev_tag in ("E", "S")
            or (prev_tag == "B" and tag in ("B", "S", "O"))
            or (prev_tag == "I" and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag, tag, prev_type, type_):
    return (tag in ("B", "S")
            or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def conlleval(gold_sents, pred_sents):
    """(precision, recall, F1) in percent, counted exactly as conlleval.pl does (sentence breaks reset)."""
    correct_chunk = found_correct = found_guessed = 0
    for gold, pred in zip(gold_sents, pred_sents):
        in_correct = False
        last_c, last_g, last_ct, last_gt = "O", "O", "", ""
        for g, p in list(zip(gold, pred)) + [("O", "O")]:
            c_tag, c_type = _split(g)
            g_tag, g_type = _split(p)
            if in_correct:
                c_end = _end_of_chunk(last_c, c_tag, last_ct, c_type)
                g_end = _end_of_chunk(last_g, g_tag, last_gt, g_type)
                if c_end and g_end and last_gt == last_ct:
                    in_correct = False
                    correct_chunk += 1
                elif c_end != g_end or g_type != c_type:
                    in_correct = False
            c_start = _start_of_chunk(last_c, c_tag, last_ct, c_type)
            g_start = _start_of_chunk(last_g, g_tag, last_gt, g_type)
            if c_start and g_start and g_type == c_type:
                in_correct = True
            found_correct += c_start
            found_guessed += g_start
            last_c, last_g, last_ct, last_gt = c_tag, g_tag, c_type, g_type
    precision = 100.0 * correct_chunk / found_guessed if found_guessed else 0.0
    recall = 100.0 * correct_chunk / found_correct if found_correct else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _score(gold, pred):
    task = NerTask()
    scores = task.score([{"tags": p} for p in pred], [{"tags": g} for g in gold])
    return scores["precision"], scores["recall"], scores["f1"]


FIXED = [
    # gold, prediction: exact match, boundary errors, type errors, stray I- starts, adjacent chunks
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O", "O", "B-ORG"]),
    (["I-ORG", "I-ORG", "O", "O"], ["B-ORG", "I-ORG", "O", "B-MISC"]),
    (["B-LOC", "B-LOC", "I-LOC", "O"], ["B-LOC", "I-LOC", "I-LOC", "O"]),
    (["O", "B-MISC", "I-MISC", "I-PER"], ["O", "I-MISC", "I-MISC", "I-PER"]),
]


def test_fixed_cases_equal_conlleval():
    gold = [g for g, _ in FIXED]
    pred = [p for _, p in FIXED]
    ours = _score(gold, pred)
    ref = conlleval(gold, pred)
    assert ours == pytest.approx(ref, abs=1e-9)
    # and the numbers themselves, counted by hand: 9 gold chunks, 9 guessed, 5 correct
    assert ref == pytest.approx((500 / 9, 500 / 9, 500 / 9))


@pytest.mark.parametrize("seed", range(5))
def test_random_sequences_equal_conlleval(seed):
    rng = random.Random(seed)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-MISC"]
    gold, pred = [], []
    for _ in range(200):
        n = rng.randint(1, 12)
        g = [rng.choice(tags) for _ in range(n)]
        p = [t if rng.random() < 0.7 else rng.choice(tags) for t in g]
        gold.append(g)
        pred.append(p)
    assert _score(gold, pred) == pytest.approx(conlleval(gold, pred), abs=1e-9)
