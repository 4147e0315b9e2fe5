"""Write nlpkit's embedded summarization data: tasks/data/summarization/{train,dev}.jsonl.

Invented match reports (teams, towns and players made up for this project; license-clean). Each
document holds the fixture, both scores and a few distracting facts in varying order; its summary says
who beat whom (or that they drew) with the score and town, and on a second line who was player of the
match when the report names one. So a model must select facts, compare two numbers and rewrite them,
not copy the first sentence. Records use the XSum field names {"document", "summary"}; summary
sentences are separated by newlines, as ROUGE-Lsum expects. Deterministic: the same seed writes the
same files; dev documents never occur in train.

    python scripts/make_summarization_data.py            # writes tasks/data/summarization/
    python scripts/make_summarization_data.py --print 3  # shows a few records
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TEAMS = ["Lions", "Tigers", "Eagles", "Wolves", "Bears", "Hawks", "Sharks", "Falcons", "Foxes", "Owls", "Rams",
         "Bulls", "Ravens", "Panthers", "Otters", "Stags"]
TOWNS = ["Almora", "Brevik", "Castelmar", "Dunholt", "Eskerby", "Fennwick", "Glenora", "Harlow Bay", "Istavo",
         "Juniper Falls", "Kelmoor", "Lindenau"]
FIRST = ["Ada", "Bram", "Cleo", "Dario", "Enzo", "Freya", "Gus", "Hilde", "Ines", "Jonas", "Kira", "Luca", "Mira",
         "Nils", "Orla", "Pavel"]
LAST = ["Arden", "Brook", "Calloway", "Dunmore", "Ellery", "Frost", "Garrick", "Holm", "Ivers", "Joss", "Keane",
        "Lowry"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEATHER = ["sunny", "rainy", "cold", "windy", "foggy", "warm"]


def goals(n: int) -> str:
    return f"{n} goal" + ("" if n == 1 else "s")


def report(rng: random.Random) -> dict[str, str]:
    home, away = rng.sample(TEAMS, 2)
    town, day = rng.choice(TOWNS), rng.choice(DAYS)
    a, b = rng.randint(0, 5), rng.randint(0, 5)
    star = f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.6 else None
    facts = [f"The {home} scored {goals(a)}.", f"The {away} scored {goals(b)}."]
    extras = [f"About {rng.randint(10, 90) * 100} fans watched the game.", f"The weather was {rng.choice(WEATHER)}.",
              f"The referee was {rng.choice(FIRST)} {rng.choice(LAST)}.",
              f"Tickets cost {rng.randint(5, 40)} euros."]
    if star:
        extras.append(f"{star} was named player of the match.")
    body = facts + rng.sample(extras, k=min(len(extras), rng.randint(2, 4)))
    if star and f"{star} was named player of the match." not in body:
        body.append(f"{star} was named player of the match.")
    rng.shuffle(body)
    document = " ".join([f"The {home} played the {away} in {town} on {day}."] + body)
    if a > b:
        first = f"The {home} beat the {away} {a}-{b} in {town}."
    elif b > a:
        first = f"The {away} beat the {home} {b}-{a} in {town}."
    else:
        first = f"The {home} and the {away} drew {a}-{b} in {town}."
    summary = first + (f"\n{star} was player of the match." if star else "")
    return {"document": document, "summary": summary}


def make(n_train: int, n_dev: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    records: list[dict] = []
    while len(records) < n_train + n_dev:
        r = report(rng)
        if r["document"] not in seen:
            seen.add(r["document"])
            records.append(r)
    return records[:n_train], records[n_train:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tasks" / "data" / "summarization"))
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--dev", type=int, default=200)
    ap.add_argument("--seed", type=int, default=29)
    ap.add_argument("--print", type=int, default=0, metavar="N", help="print N records instead of writing files")
    args = ap.parse_args()
    train, dev = make(args.train, args.dev, args.seed)
    if args.print:
        for r in train[: args.print]:
            print(json.dumps(r, ensure_ascii=False))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, records in (("train", train), ("dev", dev)):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                            encoding="utf-8")
    print(f"wrote {len(train)} train and {len(dev)} dev records to {out}")


if __name__ == "__main__":
    main()
