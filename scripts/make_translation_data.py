"""Write nlpkit's embedded translation data: tasks/data/translation/{train,dev}.{en,de}.

A small English->German phrase-book grammar written for this project (license-clean): subject, verb,
object and an optional adverb, with German article and adjective declension (gender, nominative /
accusative, weak after der/dieser, mixed after ein/mein). Small enough for a tiny from-scratch model
to learn in minutes, structured enough that it must learn agreement, not copy words. Dev sentences
never occur in train. Deterministic: the same seed writes the same files.

    python scripts/make_translation_data.py            # writes tasks/data/translation/
    python scripts/make_translation_data.py --print 5  # shows a few pairs
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

# English noun -> (German noun, gender)
ANIMATE = {
    "dog": ("Hund", "m"), "man": ("Mann", "m"), "bird": ("Vogel", "m"), "teacher": ("Lehrer", "m"),
    "friend": ("Freund", "m"), "cook": ("Koch", "m"), "cat": ("Katze", "f"), "woman": ("Frau", "f"),
    "mouse": ("Maus", "f"), "sister": ("Schwester", "f"), "child": ("Kind", "n"), "horse": ("Pferd", "n"),
    "girl": ("Mädchen", "n"),
}
THINGS = {
    "tree": ("Baum", "m"), "table": ("Tisch", "m"), "chair": ("Stuhl", "m"), "apple": ("Apfel", "m"),
    "garden": ("Garten", "m"), "letter": ("Brief", "m"), "ball": ("Ball", "m"), "fish": ("Fisch", "m"),
    "key": ("Schlüssel", "m"), "hat": ("Hut", "m"), "train": ("Zug", "m"), "flower": ("Blume", "f"),
    "lamp": ("Lampe", "f"), "door": ("Tür", "f"), "city": ("Stadt", "f"), "cup": ("Tasse", "f"),
    "bag": ("Tasche", "f"), "clock": ("Uhr", "f"), "bottle": ("Flasche", "f"), "bridge": ("Brücke", "f"),
    "street": ("Straße", "f"), "house": ("Haus", "n"), "car": ("Auto", "n"), "book": ("Buch", "n"),
    "boat": ("Boot", "n"), "window": ("Fenster", "n"), "picture": ("Bild", "n"), "bike": ("Fahrrad", "n"),
    "ship": ("Schiff", "n"), "bread": ("Brot", "n"), "egg": ("Ei", "n"), "glass": ("Glas", "n"),
}
ADJECTIVES = {
    "red": "rot", "big": "groß", "small": "klein", "old": "alt", "new": "neu", "green": "grün", "blue": "blau",
    "black": "schwarz", "white": "weiß", "young": "jung", "beautiful": "schön", "fast": "schnell",
    "yellow": "gelb", "tired": "müde", "quiet": "leise", "clever": "klug", "wild": "wild", "strong": "stark",
}
VERBS = {
    "sees": "sieht", "likes": "mag", "finds": "findet", "has": "hat", "paints": "malt", "carries": "trägt",
    "buys": "kauft", "knows": "kennt", "draws": "zeichnet", "hears": "hört", "builds": "baut",
    "washes": "wäscht", "needs": "braucht", "sells": "verkauft", "loves": "liebt", "takes": "nimmt",
    "holds": "hält",
}
ADVERBS = {"today": "heute", "again": "wieder", "now": "jetzt", "often": "oft", "every day": "jeden Tag",
           "in the morning": "am Morgen", "in the evening": "am Abend"}

# determiner -> {case: {gender: German form}}, and the adjective ending it takes
DETERMINERS = {
    "the": ({"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"}}, "weak"),
    "this": ({"nom": {"m": "dieser", "f": "diese", "n": "dieses"},
              "acc": {"m": "diesen", "f": "diese", "n": "dieses"}}, "weak"),
    "a": ({"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"}}, "mixed"),
    "my": ({"nom": {"m": "mein", "f": "meine", "n": "mein"}, "acc": {"m": "meinen", "f": "meine", "n": "mein"}},
           "mixed"),
}
ENDINGS = {
    "weak": {"nom": {"m": "e", "f": "e", "n": "e"}, "acc": {"m": "en", "f": "e", "n": "e"}},
    "mixed": {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"}},
}


def inflect(stem: str, ending: str) -> str:
    return stem + (ending[1:] if stem.endswith("e") else ending)  # müde + er -> müder


def noun_phrase(rng: random.Random, nouns: dict, case: str, adjectives: dict) -> tuple[str, str]:
    noun = rng.choice(sorted(nouns))
    de_noun, gender = nouns[noun]
    det = rng.choice(sorted(DETERMINERS))
    forms, declension = DETERMINERS[det]
    en, de = [det], [forms[case][gender]]
    if rng.random() < 0.5:
        adj = rng.choice(sorted(adjectives))
        en.append(adj)
        de.append(inflect(adjectives[adj], ENDINGS[declension][case][gender]))
    en.append(noun)
    if det == "a" and en[1][0] in "aeiou":
        en[0] = "an"
    return " ".join(en), " ".join(de + [de_noun])


def sentence(rng: random.Random, size: float = 1.0) -> tuple[str, str]:
    """One (English, German) pair; ``size`` < 1 keeps only that share of each word list (smaller task)."""
    def part(d: dict) -> dict:
        keys = sorted(d)[: max(2, round(len(d) * size))]
        return {k: d[k] for k in keys}

    animate, things, adjectives = part(ANIMATE), part(THINGS), part(ADJECTIVES)
    verbs, adverbs = part(VERBS), part(ADVERBS)
    subj_en, subj_de = noun_phrase(rng, animate, "nom", adjectives)
    obj_en, obj_de = noun_phrase(rng, {**animate, **things}, "acc", adjectives)
    verb = rng.choice(sorted(verbs))
    en, de = f"{subj_en} {verb} {obj_en}", f"{subj_de} {verbs[verb]} {obj_de}"
    if rng.random() < 0.3:
        adv = rng.choice(sorted(adverbs))
        en, de = f"{en} {adv}", f"{de} {adverbs[adv]}"
    return en[0].upper() + en[1:] + ".", de[0].upper() + de[1:] + "."


def make(n_train: int, n_dev: int, seed: int, size: float = 1.0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Distinct pairs; dev pairs never occur in train."""
    rng = random.Random(seed)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n_train + n_dev:
        en, de = sentence(rng, size)
        if en not in seen:
            seen.add(en)
            pairs.append((en, de))
    return pairs[:n_train], pairs[n_train:]


def write(folder: Path, train: list, dev: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in (("train", train), ("dev", dev)):
        for side, lang in ((0, "en"), (1, "de")):
            (folder / f"{split}.{lang}").write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tasks" / "data" / "translation"))
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--print", type=int, default=0, metavar="N", help="print N pairs instead of writing files")
    args = ap.parse_args()
    train, dev = make(args.train, args.dev, args.seed)
    if args.print:
        for en, de in train[: args.print]:
            print(f"{en}\t{de}")
        return
    write(Path(args.out), train, dev)
    print(f"wrote {len(train)} train and {len(dev)} dev pairs to {args.out}")


if __name__ == "__main__":
    main()
