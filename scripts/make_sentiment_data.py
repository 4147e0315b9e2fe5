"""Write nlpkit's embedded sentiment data (tasks/data/sentiment/{train,dev}.tsv).

Short reviews of films, restaurants, hotels and gadgets, labelled negative or positive. Generated from
templates and word lists written for this project, so the data is license-clean; deterministic (the
same seeds write the same files). Not a bag of words: negation ("was not great") flips the polarity
and in "X but Y" the clause after "but" decides, so a model has to read word order. Dev draws half of
the things it talks about from the part of each list train never uses (opinion words are shared: a
model trained from scratch cannot know the polarity of a word it never saw).

Layout: GLUE-style TSV, header ``sentence<TAB>label``.
"""
from __future__ import annotations

import random
from pathlib import Path

THINGS = {
    "film": ["the plot", "the acting", "the soundtrack", "the ending", "the dialogue", "the camera work"],
    "restaurant": ["the food", "the service", "the dessert", "the soup", "the waiter", "the wine list"],
    "hotel": ["the room", "the staff", "the breakfast", "the bed", "the view", "the pool"],
    "gadget": ["the battery", "the screen", "the camera", "the keyboard", "the charger", "the speaker"],
}
GOOD = ["great", "wonderful", "excellent", "delightful", "superb", "charming", "brilliant", "lovely",
        "impressive", "fantastic", "pleasant", "outstanding"]
BAD = ["awful", "terrible", "dreadful", "boring", "disappointing", "poor", "horrible", "dull", "mediocre",
       "annoying", "clumsy", "miserable"]
LIKE = ["loved", "enjoyed", "adored", "recommend", "liked"]
DISLIKE = ["hated", "regretted", "disliked", "resented", "despised"]
ADVERB = ["really", "truly", "quite", "very", "rather", "simply"]
END_GOOD = ["worth every penny .", "i would go back tomorrow .", "five stars from me .", "a real treat ."]
END_BAD = ["a waste of money .", "never again .", "avoid it .", "one star is too many ."]


def pick(items: list[str], rng: random.Random, held_out: bool) -> str:
    cut = int(len(items) * 0.75)
    return rng.choice(items[cut:] if held_out and rng.random() < 0.5 else items[:cut])


def review(rng: random.Random, held_out: bool) -> tuple[str, str]:
    domain = rng.choice(sorted(THINGS))
    thing = pick(THINGS[domain], rng, held_out)
    other = rng.choice([t for t in THINGS[domain] if t != thing])
    positive = rng.random() < 0.5
    good, bad = rng.choice(GOOD), rng.choice(BAD)
    word, opposite = (good, bad) if positive else (bad, good)
    # negation and contrast (which need word order) are a third: enough for a small model to learn them
    kind = rng.choices(range(5), weights=[2, 2, 1, 2, 2])[0]
    if kind == 0:
        text = f"{thing} was {rng.choice(ADVERB)} {word} ."
    elif kind == 1:  # negation flips the opinion word
        text = f"{thing} was not {opposite} at all ."
    elif kind == 2:  # the clause after "but" decides
        text = f"{other} was {opposite} but {thing} was {word} ."
    elif kind == 3:
        verb = rng.choice(LIKE if positive else DISLIKE)
        text = f"i {verb} this {domain} , {thing} was {word} ."
    else:
        text = f"{thing} and {other} were {word} , {rng.choice(END_GOOD if positive else END_BAD)}"
    return text, "positive" if positive else "negative"


def write(path: Path, n: int, seed: int, held_out: bool) -> None:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        text, label = review(rng, held_out)
        lines.append(f"{text}\t{label}")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    folder = Path(__file__).resolve().parent.parent / "tasks" / "data" / "sentiment"
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "train.tsv", 2000, seed=1, held_out=False)
    write(folder / "dev.tsv", 300, seed=2, held_out=True)
    print(f"wrote {folder}/train.tsv and dev.tsv")
