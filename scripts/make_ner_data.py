"""Write nlpkit's embedded NER data (tasks/data/ner/{train,dev}.conll).

The sentences are generated from templates and invented word lists written for this project, so the
data is license-clean. Deterministic: the same seed writes the same files. Dev uses held-out names
for part of its entities, so the score says something about generalisation, not only memory.
"""
from __future__ import annotations

import random
from pathlib import Path

FIRST = ["Anna", "Boris", "Chen", "Dalia", "Emeka", "Fatima", "Goran", "Hana", "Ivo", "Jasmin", "Kofi", "Lena",
         "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tomoko", "Umar", "Vera", "Wiktor", "Yara",
         "Zeynep", "Aiko", "Bruno", "Carla", "Dmitri", "Elif"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad", "Silva", "Novak", "Becker", "Ivanova",
        "Mensah", "Rossi", "Nakamura", "Jansen", "Petrov", "Castillo", "Dubois", "Schmidt", "Yilmaz", "Kaur",
        "Andersen", "Costa", "Fischer", "Horvat", "Laine"]
CITY = ["Lisbon", "Nairobi", "Osaka", "Tromso", "Valparaiso", "Krakow", "Accra", "Montreal", "Hobart", "Tbilisi",
        "Porto Alegre", "Ljubljana", "Cape Town", "Kuala Lumpur", "Rotterdam", "Quito", "Tampere", "Bilbao",
        "San Sebastian", "Hanoi"]
COUNTRY = ["Portugal", "Kenya", "Japan", "Norway", "Chile", "Poland", "Ghana", "Canada", "Australia", "Georgia",
           "Brazil", "Slovenia", "South Africa", "Malaysia", "Netherlands", "Ecuador", "Finland", "Spain", "Vietnam"]
ORG_HEAD = ["Northwind", "Bluepeak", "Silverline", "Redfern", "Greenhill", "Ironbridge", "Lakeside", "Stonegate",
            "Brightwater", "Oakridge", "Sunfield", "Clearview", "Westbrook", "Highmoor", "Copperleaf"]
ORG_TAIL = ["Bank", "Airways", "Motors", "Group", "University", "Council", "Foundation", "Energy", "Records",
            "Telecom", "United", "Press"]
MISC = ["Olympic Games", "Nobel Prize", "World Cup", "Euro", "Paralympics", "Grand Prix", "Davis Cup",
        "Golden Globe", "Booker Prize", "Tour de France"]
NATIONALITY = ["Portuguese", "Kenyan", "Japanese", "Norwegian", "Chilean", "Polish", "Ghanaian", "Canadian",
               "Brazilian", "Finnish", "Spanish", "Dutch"]

TEMPLATES = [
    "{PER} visited {LOC} on Monday .",
    "{PER} , a spokesman for {ORG} , said the talks in {LOC} had ended .",
    "{ORG} shares rose 3 percent in {LOC} trading .",
    "The {MISC} will be held in {LOC} next year .",
    "{PER} won the {MISC} for the second time .",
    "{ORG} signed a deal with {ORG} worth 40 million dollars .",
    "Police in {LOC} said {PER} was arrested late on Friday .",
    "{PER} told reporters that {ORG} would open an office in {LOC} .",
    "{MISC} officials met {PER} in {LOC} .",
    "The {MISC} team beat {ORG} 2-1 in {LOC} .",
    "{PER} and {PER} arrived in {LOC} for the summit .",
    "Analysts at {ORG} expect growth in {LOC} to slow .",
    "{PER} joined {ORG} in 2019 after leaving {ORG} .",
    "Flights from {LOC} to {LOC} were cancelled because of snow .",
    "The minister , {PER} , resigned on Tuesday .",
    "{ORG} reported a loss of 12 million euros .",
    "Fans in {LOC} celebrated the {MISC} victory .",
    "{PER} , who was born in {LOC} , now lives in {LOC} .",
    "A report by {ORG} criticised the {MISC} organisers .",
    "Prices in {LOC} fell for the third month in a row .",
    "The company said it had no plans to sell the unit .",
    "Shares closed lower on Wednesday after a quiet session .",
    "{PER} said the weather would improve by the weekend .",
    "The {MISC} ceremony in {LOC} drew large crowds .",
    "{ORG} chief executive {PER} will step down in May .",
]


SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vo", "shi", "an", "bel", "dor", "e", "fa", "gu", "ho", "ix", "ju",
             "ke", "lin", "mar", "no", "os", "pe", "qui", "ru", "sa", "tor", "u", "ve", "wen", "ya", "zo"]


def invented(rng: random.Random) -> str:
    """A made-up proper name, so the model must learn from context and shape, not memorise a list."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def entity(kind: str, rng: random.Random, held_out: bool) -> list[str]:
    def pick(items):  # dev draws a share of its names from the part of each list train never uses
        cut = int(len(items) * 0.75)
        if rng.random() < 0.5:
            return invented(rng)
        return rng.choice(items[cut:] if held_out and rng.random() < 0.15 else items[:cut])

    if kind == "PER":
        return [pick(FIRST), pick(LAST)] if rng.random() < 0.7 else [pick(LAST)]
    if kind == "LOC":
        return pick(CITY if rng.random() < 0.6 else COUNTRY).split()
    if kind == "ORG":
        return [pick(ORG_HEAD), pick(ORG_TAIL)]
    if rng.random() < 0.3:
        return [pick(NATIONALITY)]
    return pick(MISC).split()


def sentence(rng: random.Random, held_out: bool) -> list[tuple[str, str]]:
    out = []
    for piece in rng.choice(TEMPLATES).split():
        if piece.startswith("{") and piece.endswith("}"):
            kind = piece[1:-1]
            for i, word in enumerate(entity(kind, rng, held_out)):
                out.append((word, ("B-" if i == 0 else "I-") + kind))
        else:
            out.append((piece, "O"))
    return out


def write(path: Path, n: int, seed: int, held_out: bool) -> None:
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        for word, tag in sentence(rng, held_out):
            lines.append(f"{word} {tag}")
        lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    folder = Path(__file__).resolve().parent.parent / "tasks" / "data" / "ner"
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "train.conll", 1500, seed=1, held_out=False)
    write(folder / "dev.conll", 200, seed=2, held_out=True)
    print(f"wrote {folder}/train.conll and dev.conll")
