"""Write nlpkit's embedded question-answering data:

- tasks/data/qa/{train,dev}.json                     SQuAD v1.1 layout (extractive QA)
- tasks/data/reading-comprehension/{train,dev}.jsonl  multiple choice, 4 options (reading comprehension)

Paragraphs are short invented biographies built from templates and invented word lists written for this
project, so the data is license-clean. A paragraph tells about one or two people; people in one paragraph
share kinds of facts (two birthplaces, two employers, ...), so a model has to find the person a question
asks about rather than the first city in sight. The embedded sets are kept easy enough for a model
trained from scratch in a few minutes: questions are worded like the sentences and 30 % of later
sentences say "he"/"she". Dev is new paragraphs from the same word lists. Deterministic: the same
arguments write the same files.

Harder sets for experiments (not committed): --paraphrase (varied question wording), --pronouns 0.6,
--held-out 0.5 (half of dev's names and values from lists training never sees), more people per
paragraph for long contexts that need many windows, --v2 for SQuAD v2.0 unanswerable questions:
    python scripts/make_qa_data.py --out /tmp/qa-acc --train 600 --dev 150 --people 2-5 --dev-people 8-14 \
        --paraphrase --pronouns 0.6 --held-out 0.5
    python scripts/make_qa_data.py --out /tmp/qa-v2 --train 3000 --dev 400 --people 2-4 --v2 0.25
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

FEMALE = ["Anna", "Dalia", "Fatima", "Hana", "Jasmin", "Lena", "Nadia", "Priya", "Rosa", "Tomoko", "Vera", "Yara",
          "Zeynep", "Aiko", "Carla", "Elif", "Greta", "Ines", "Kalinda", "Mirela", "Noor", "Olena", "Sanna", "Thandi"]
MALE = ["Boris", "Chen", "Emeka", "Goran", "Ivo", "Kofi", "Mateo", "Oskar", "Quentin", "Sven", "Umar", "Wiktor",
        "Bruno", "Dmitri", "Farid", "Hugo", "Jonas", "Luka", "Nikolai", "Pablo", "Rafael", "Tariq", "Viktor", "Yusuf"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad", "Silva", "Novak", "Becker", "Ivanova",
        "Mensah", "Rossi", "Nakamura", "Jansen", "Petrov", "Castillo", "Dubois", "Schmidt", "Yilmaz", "Kaur",
        "Andersen", "Costa", "Fischer", "Horvat", "Laine", "Varga", "Osei", "Brennan", "Sato", "Quispe"]
CITY = ["Lisbon", "Nairobi", "Osaka", "Tromso", "Valparaiso", "Krakow", "Accra", "Montreal", "Hobart", "Tbilisi",
        "Porto Alegre", "Ljubljana", "Cape Town", "Kuala Lumpur", "Rotterdam", "Quito", "Tampere", "Bilbao",
        "San Sebastian", "Hanoi", "Adelaide", "Bergen", "Cordoba", "Dakar", "Graz", "Izmir", "Lyon", "Mombasa"]
ORG = ["Northwind Bank", "Bluepeak Airways", "Silverline Motors", "Redfern Group", "Greenhill University",
       "Ironbridge Council", "Lakeside Foundation", "Stonegate Energy", "Brightwater Records", "Oakridge Telecom",
       "Sunfield Press", "Clearview Labs", "Westbrook Hospital", "Highmoor Museum", "Copperleaf Studios",
       "Harbourline Shipping", "Meadowgate Foods", "Eastvale Library", "Pinecrest Observatory", "Riverton Theatre"]
JOB = ["nurse", "architect", "pilot", "librarian", "engineer", "teacher", "chemist", "journalist", "carpenter",
       "translator", "surgeon", "photographer", "accountant", "geologist", "baker", "electrician", "economist",
       "veterinarian", "curator", "software developer"]
INSTRUMENT = ["violin", "cello", "trumpet", "piano", "accordion", "clarinet", "harp", "drums", "flute", "banjo",
              "saxophone", "oboe", "mandolin", "tuba"]
ANIMAL = ["dog", "cat", "parrot", "horse", "rabbit", "tortoise", "goat", "ferret"]
COLOUR = ["black", "white", "grey", "brown", "ginger", "spotted", "golden", "striped"]
PET_NAME = ["Biscuit", "Pepper", "Luna", "Otto", "Mango", "Ziggy", "Clover", "Nimbus", "Pickle", "Saffron", "Toffee",
            "Comet", "Juniper", "Waffle", "Pixel", "Maple"]
TOPIC = ["bees", "old lighthouses", "river fishing", "mountain railways", "desert plants", "chess openings",
         "medieval bridges", "sea turtles", "street food", "volcanoes", "paper making", "night trains"]
TITLE_A = ["Silent", "Golden", "Last", "Hidden", "Northern", "Broken", "Distant", "Paper", "Winter", "Crimson"]
TITLE_B = ["Harbour", "Orchard", "Lantern", "Compass", "Garden", "Bridge", "Valley", "Letters", "Mirror", "River"]
SPORT = ["tennis", "rowing", "chess", "volleyball", "fencing", "cycling", "badminton", "curling", "judo", "archery"]
NUMBER = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "fifteen", "twenty"]
FILLER = ["The weather that year was unusually mild.", "Few people outside the region had heard of it at the time.",
          "Local newspapers wrote about it for weeks.", "Nobody expected things to change so quickly.",
          "The town itself has grown a lot since then.", "Many of the old buildings are still standing."]

# A fact: sentences stating it (with the subject as {S}, values as {slot}) and questions about each slot.
# In questions {P} is the person's full name; the first question of each list is worded like the sentences.
FACTS = {
    "born": {
        "values": {"city": CITY, "year": None},
        "say": ["{S} was born in {city} in {year}.", "{S} was born in {year} in {city}.",
                "In {year}, {S} was born in the city of {city}."],
        "ask": {"city": ["Where was {P} born?", "In which city was {P} born?", "What is the birthplace of {P}?"],
                "year": ["When was {P} born?", "In what year was {P} born?", "What year was {P} born in?"]},
    },
    "work": {
        "values": {"job": JOB, "org": ORG},
        "say": ["{S} works as a {job} at {org}.", "{S} has a job as a {job} with {org}.",
                "At {org}, {S} is employed as a {job}."],
        "ask": {"job": ["What does {P} work as?", "What does {P} do for a living?", "What is the profession of {P}?",
                        "What job does {P} have?"],
                "org": ["Where does {P} work?", "Which organisation employs {P}?", "For whom does {P} work?"]},
    },
    "move": {
        "values": {"years": NUMBER, "city": CITY},
        "say": ["After {years} years abroad, {S} moved to {city}.", "{S} settled in {city} after {years} years away.",
                "{S} spent {years} years travelling before moving to {city}."],
        "ask": {"city": ["Where did {P} move to?", "In which city did {P} settle?", "Which city did {P} move to?"],
                "years": ["How many years did {P} spend away before moving?",
                          "For how many years was {P} away before settling down?"]},
    },
    "music": {
        "values": {"instrument": INSTRUMENT},
        "say": ["{S} plays the {instrument} in a small band.", "In the evenings {S} practises the {instrument}.",
                "{S} learned to play the {instrument} as a child."],
        "ask": {"instrument": ["Which instrument does {P} play?", "What instrument does {P} play?",
                               "What does {P} play in the evenings or in a band?"]},
    },
    "pet": {
        "values": {"name": PET_NAME, "colour": COLOUR, "animal": ANIMAL},
        "say": ["{S} has a {colour} {animal} called {name}.", "{S} owns a {colour} {animal} named {name}.",
                "A {colour} {animal} called {name} lives with {S}."],
        "ask": {"name": ["What is {P}'s {animal} called?", "What is the name of the {animal} that belongs to {P}?"],
                "colour": ["What colour is the {animal} of {P}?", "Which colour is {P}'s {animal}?"]},
    },
    "book": {
        "values": {"title": None, "topic": TOPIC},
        "say": ["{S} wrote a book called {title} about {topic}.", "{S} is the author of {title}, a book about {topic}.",
                "In {title}, {S} wrote about {topic}."],
        "ask": {"title": ["Which book did {P} write?", "What is the title of the book written by {P}?"],
                "topic": ["What is the book by {P} about?", "What subject did {P} write a book about?"]},
    },
    "sport": {
        "values": {"sport": SPORT, "number": NUMBER},
        "say": ["{S} has won {number} medals in {sport}.", "In {sport}, {S} has won {number} medals so far.",
                "{S} took up {sport} and has won {number} medals."],
        "ask": {"sport": ["In what sport has {P} won medals?", "Which sport does {P} compete in?"],
                "number": ["How many medals has {P} won?", "How many medals did {P} win?"]},
    },
}
RELATIONS = list(FACTS)


def split_pool(pool: list[str], held_out: float, rng: random.Random) -> str:
    """Values come from the first 75 % of a list, except a ``held_out`` share from the last 25 %."""
    cut = int(len(pool) * 0.75)
    return rng.choice(pool[cut:] if held_out and rng.random() < held_out else pool[:cut])


def value(relation: str, slot: str, rng: random.Random, held_out: float) -> str:
    pool = FACTS[relation]["values"][slot]
    if slot == "year":
        return str(rng.randint(1931, 2004))
    if slot == "title":
        return f"The {split_pool(TITLE_A, held_out, rng)} {split_pool(TITLE_B, held_out, rng)}"
    return split_pool(pool, held_out, rng)


def render(template: str, values: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Fill a template; also return where each slot landed (character offsets)."""
    out, spans, pos = [], {}, 0
    for piece in re.split(r"(\{\w+\})", template):
        if piece.startswith("{") and piece.endswith("}"):
            text = values[piece[1:-1]]
            spans[piece[1:-1]] = (pos, pos + len(text))
        else:
            text = piece
        out.append(text)
        pos += len(text)
    sentence = "".join(out)
    return sentence[0].upper() + sentence[1:], spans


def person(rng: random.Random, held_out: float, taken: set[str]) -> dict:
    while True:
        female = rng.random() < 0.5
        first = split_pool(FEMALE if female else MALE, held_out, rng)
        last = split_pool(LAST, held_out, rng)
        if first not in taken and last not in taken:  # names in one paragraph never share a part
            taken.update((first, last))
            return {"name": f"{first} {last}", "pronoun": "she" if female else "he"}


def paragraph(rng: random.Random, held_out: float, n_people: int, plain: bool = False,
              pronouns: float = 0.6) -> tuple[str, list[dict]]:
    """A paragraph and all the (question, answer) pairs it supports. Relations repeat across people, so
    several values of the same kind (cities, years, ...) compete in one paragraph."""
    shared = rng.sample(RELATIONS, k=min(len(RELATIONS), rng.randint(2, 4)))
    text, facts = "", []
    taken: set[str] = set()
    for _ in range(n_people):
        who = person(rng, held_out, taken)
        relations = shared[:]
        rng.shuffle(relations)
        for r_i, relation in enumerate(relations[: rng.randint(max(1, len(relations) - 1), len(relations))]):
            spec = FACTS[relation]
            values = {slot: value(relation, slot, rng, held_out) for slot in spec["values"]}
            template = rng.choice(spec["say"])
            # "he"/"she" only opens a sentence, and never the first one about a person
            pronoun = r_i > 0 and template.startswith("{S}") and rng.random() < pronouns
            sentence, spans = render(template, {**values, "S": who["pronoun"] if pronoun else who["name"]})
            start = len(text) + (1 if text else 0)
            text = f"{text} {sentence}" if text else sentence
            for slot, templates in spec["ask"].items():
                a, b = spans[slot]
                question = (templates[0] if plain else rng.choice(templates)).format(P=who["name"], **values)
                facts.append({"question": question, "text": values[slot], "answer_start": start + a,
                              "relation": relation, "slot": slot, "person": who["name"], "values": values})
        if rng.random() < 0.25:
            text += " " + rng.choice(FILLER)
    return text, facts


def unanswerable(rng: random.Random, facts: list[dict], held_out: float) -> str:
    """A question about someone the paragraph never mentions, or a fact it never states."""
    people = sorted({f["person"] for f in facts})
    stated = {(f["person"], f["relation"]) for f in facts}
    missing = [(p, r) for p in people for r in RELATIONS if (p, r) not in stated]
    if missing and rng.random() < 0.5:
        who, relation = rng.choice(missing)
    else:
        who, relation = person(rng, held_out, set(" ".join(people).split()))["name"], rng.choice(RELATIONS)
    spec = FACTS[relation]
    slot = rng.choice(list(spec["ask"]))
    values = {s: value(relation, s, rng, held_out) for s in spec["values"]}
    return rng.choice(spec["ask"][slot]).format(P=who, **values)


def squad(n_questions: int, seed: int, held_out: float, people: tuple[int, int], v2: float, per_paragraph: int,
          plain: bool = False, pronouns: float = 0.6) -> dict:
    rng = random.Random(seed)
    articles, count, p_i = [], 0, 0
    while count < n_questions:
        context, facts = paragraph(rng, held_out, rng.randint(*people), plain, pronouns)
        qas = []
        for f in rng.sample(facts, k=min(per_paragraph, len(facts))):
            assert context[f["answer_start"]:f["answer_start"] + len(f["text"])] == f["text"]
            qas.append({"id": f"q{seed}-{count + len(qas)}", "question": f["question"],
                        "answers": [{"text": f["text"], "answer_start": f["answer_start"]}]})
        if v2:
            for qa in qas:
                qa["is_impossible"] = False
            for _ in range(sum(rng.random() < v2 for _ in qas)):
                qas.append({"id": f"q{seed}-{count + len(qas)}", "question": unanswerable(rng, facts, held_out),
                            "answers": [], "is_impossible": True})
        qas = qas[: n_questions - count]
        count += len(qas)
        articles.append({"title": f"Paragraph {p_i}", "paragraphs": [{"context": context, "qas": qas}]})
        p_i += 1
    return {"version": "v2.0" if v2 else "1.1", "data": articles}


RC_TRAIN, RC_DEV = 600, 150


def multiple_choice(n_questions: int, seed: int, held_out: float, plain: bool = True, pronouns: float = 0.3,
                    n_options: int = 4) -> list[dict]:
    """Reading-comprehension questions with graded distractors: the same kind of fact about someone else
    in the passage (when there is one), a value of another kind that the passage does mention, and
    values of the right kind from outside the passage. Neither "it occurs in the passage" nor "it is a
    city" is enough on its own; together they leave two options, and only reading settles it."""
    rng = random.Random(seed)
    records = []
    while len(records) < n_questions:
        context, facts = paragraph(rng, held_out, rng.randint(1, 2), plain, pronouns)
        for f in rng.sample(facts, k=min(3, len(facts))):
            kind = (f["relation"], f["slot"])
            inside = sorted({g["text"] for g in facts if (g["relation"], g["slot"]) == kind} - {f["text"]})
            other = sorted({g["text"] for g in facts if (g["relation"], g["slot"]) != kind} - {f["text"]})
            options = [f["text"]]
            for pool in (inside, other):
                if pool:
                    options.append(rng.choice(pool))
            while len(options) < n_options:
                candidate = value(f["relation"], f["slot"], rng, held_out)
                if candidate not in options and candidate not in context:
                    options.append(candidate)
            rng.shuffle(options)
            question = f["question"]
            if rng.random() < 0.3:  # RACE-style cloze: a statement with a blank
                spec = FACTS[f["relation"]]
                question, _ = render(rng.choice(spec["say"]), {**f["values"], f["slot"]: "_", "S": f["person"]})
            records.append({"id": f"rc{seed}-{len(records)}", "article": context, "question": question,
                            "options": options, "answer": "ABCDEFGH"[options.index(f["text"])]})
            if len(records) == n_questions:
                break
    return records


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write SQuAD-format train.json/dev.json here instead of the embedded data")
    parser.add_argument("--train", type=int, default=1200, help="training questions")
    parser.add_argument("--dev", type=int, default=240, help="dev questions")
    parser.add_argument("--people", default="1-2", help="people per paragraph, MIN-MAX (more: longer contexts)")
    parser.add_argument("--dev-people", help="people per dev paragraph, MIN-MAX (default: as --people)")
    parser.add_argument("--v2", type=float, default=0.0, help="unanswerable questions per answerable one (SQuAD v2.0)")
    parser.add_argument("--per-paragraph", type=int, default=5, help="questions asked per paragraph")
    parser.add_argument("--paraphrase", action="store_true",
                        help="vary the wording of questions (default: worded like the sentences)")
    parser.add_argument("--pronouns", type=float, default=0.3, help="share of later sentences that say he/she")
    parser.add_argument("--held-out", type=float, default=0.0,
                        help="share of dev names and values drawn from lists that training never uses")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    people = tuple(int(x) for x in args.people.split("-"))
    dev_people = tuple(int(x) for x in args.dev_people.split("-")) if args.dev_people else people
    style = {"plain": not args.paraphrase, "pronouns": args.pronouns}
    root = Path(__file__).resolve().parent.parent / "tasks" / "data"
    qa_dir = Path(args.out) if args.out else root / "qa"
    for split, n, seed, held_out, many in (("train", args.train, args.seed, 0.0, people),
                                           ("dev", args.dev, args.seed + 1, args.held_out, dev_people)):
        write_json(qa_dir / f"{split}.json", squad(n, seed, held_out, many, args.v2, args.per_paragraph, **style))
    print(f"wrote {qa_dir}/train.json and dev.json")
    if not args.out:
        rc_dir = root / "reading-comprehension"
        write_jsonl(rc_dir / "train.jsonl", multiple_choice(RC_TRAIN, 11, 0.0, **style))
        write_jsonl(rc_dir / "dev.jsonl", multiple_choice(RC_DEV, 12, args.held_out, **style))
        print(f"wrote {rc_dir}/train.jsonl and dev.jsonl")


if __name__ == "__main__":
    main()
