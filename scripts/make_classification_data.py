"""Write nlpkit's embedded topic-classification data (tasks/data/classification/{train,dev}.csv).

Four topics (sports, business, science, arts). Sentences are generated from templates and word lists
written for this project, so the data is license-clean. Deterministic: the same seeds write the same
files. Every sentence mixes topic words with words shared by all topics, and dev draws half of its
topic phrases from the part of each list that train never uses, so the score says something about
generalisation, not only memory.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

TOPICS = {
    "sports": {
        "who": ["the striker", "the goalkeeper", "the home side", "the coach", "the sprinter", "the captain",
                "the young midfielder", "the cycling team", "the tennis champion", "the rugby squad",
                "the veteran boxer", "the relay team"],
        "did": ["won", "lost", "scored twice in", "trained hard for", "was sent off in", "qualified for",
                "withdrew from", "dominated"],
        "what": ["the cup final", "the league title", "the penalty shootout", "the championship match",
                 "the relay race", "the derby", "the marathon", "the qualifying round", "the home game",
                 "the semi-final", "the grand slam", "the away fixture"],
        "where": ["at the stadium", "in front of a sold-out crowd", "on a muddy pitch", "in extra time",
                  "at the athletics track", "before the transfer window closed"],
    },
    "business": {
        "who": ["the central bank", "the retailer", "shareholders", "the chief executive", "the airline",
                "the start-up", "the carmaker", "investors", "the mining group", "the insurer",
                "the supermarket chain", "the energy firm"],
        "did": ["reported", "cut", "raised", "announced", "warned about", "sold", "blamed the market for",
                "expects"],
        "what": ["quarterly profits", "interest rates", "its annual revenue", "a merger", "job cuts",
                 "the share price", "a takeover bid", "its dividend", "falling sales", "the bond issue",
                 "new tariffs", "a cost-cutting plan"],
        "where": ["on the stock exchange", "in its earnings call", "despite weak demand", "after the audit",
                  "ahead of the shareholder meeting", "as inflation slowed"],
    },
    "science": {
        "who": ["the researchers", "the astronomers", "a team of biologists", "the chemists", "the geologists",
                "the physicists", "the laboratory", "climate scientists", "the space agency", "the botanists",
                "the neuroscientists", "the marine biologists"],
        "did": ["discovered", "measured", "published a study on", "observed", "sequenced", "tested",
                "simulated", "mapped"],
        "what": ["a distant galaxy", "the genome of a rare frog", "a new enzyme", "ancient fossils",
                 "the magnetic field", "a vaccine candidate", "the deep ocean floor", "a comet",
                 "quantum particles", "the melting glacier", "brain cells", "a new mineral"],
        "where": ["with a powerful telescope", "in a peer-reviewed journal", "under the microscope",
                  "in the particle accelerator", "during the field expedition", "in controlled experiments"],
    },
    "arts": {
        "who": ["the novelist", "the orchestra", "the painter", "the film director", "the ballet company",
                "the poet", "the sculptor", "the theatre troupe", "the jazz quartet", "the museum curator",
                "the opera singer", "the playwright"],
        "did": ["premiered", "exhibited", "performed", "released", "rehearsed", "wrote", "restored",
                "staged"],
        "what": ["a new symphony", "a collection of portraits", "the debut novel", "a documentary film",
                 "the classic ballet", "a book of poems", "a bronze statue", "the musical", "a live album",
                 "the retrospective exhibition", "an experimental opera", "a comedy play"],
        "where": ["at the gallery", "on the opening night", "at the film festival", "in the concert hall",
                  "to glowing reviews", "at the national theatre"],
    },
}
SHARED = ["on Monday", "last week", "according to local reports", "for the first time", "this year",
          "once again", "earlier today", "after months of preparation"]
TEMPLATES = [
    "{who} {did} {what} {where} .",
    "{when} , {who} {did} {what} .",
    "{who} {did} {what} {when} .",
    "Reports say {who} {did} {what} {where} .",
    "{what} was the talk of the week after {who} {did} it {where} .",
    "{when} {who} {did} {what} , {where} .",
]


def pick(items: list[str], rng: random.Random, held_out: bool) -> str:
    cut = int(len(items) * 0.75)
    return rng.choice(items[cut:] if held_out and rng.random() < 0.5 else items[:cut])


def sentence(topic: str, rng: random.Random, held_out: bool) -> str:
    words = TOPICS[topic]
    text = rng.choice(TEMPLATES).format(
        who=pick(words["who"], rng, held_out), did=rng.choice(words["did"]), what=pick(words["what"], rng, held_out),
        where=rng.choice(words["where"]), when=rng.choice(SHARED))
    return text[0].upper() + text[1:]


def write(path: Path, n: int, seed: int, held_out: bool) -> None:
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    with open(path, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["text", "label"])
        for i in range(n):
            topic = topics[i % len(topics)] if i < len(topics) else rng.choice(topics)
            out.writerow([sentence(topic, rng, held_out), topic])


if __name__ == "__main__":
    folder = Path(__file__).resolve().parent.parent / "tasks" / "data" / "classification"
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "train.csv", 1200, seed=1, held_out=False)
    write(folder / "dev.csv", 300, seed=2, held_out=True)
    print(f"wrote {folder}/train.csv and dev.csv")
