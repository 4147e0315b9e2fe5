"""NER and relation extraction as generative extraction (option mode=generative): the inline target, its
parse back to one tag per word / one relation, scoring through the head mode's own scorers, and short
trainings on a decoder and an encoder that save, reload and predict the same."""
from __future__ import annotations

import pytest

from nlpkit_tasks.ner import align_tags, parse_generated, parse_inline, render_inline, spans
from nlpkit_tasks.relation_extraction import inline_marked_text, parse_marked, parse_relation

TYPES = ["LOC", "MISC", "ORG", "PER"]


# ---- NER: render -> parse ------------------------------------------------------------------------------
ROUND_TRIPS = [
    # entities in the middle, punctuation
    (["John", "Smith", "lives", "in", "Paris", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]),
    # entities at the start and at the end, one word each
    (["Paris", "beat", "Lyon"], ["B-ORG", "O", "B-ORG"]),
    # the whole sentence one entity
    (["New", "York", "Times"], ["B-ORG", "I-ORG", "I-ORG"]),
    # adjacent entities of the same type stay two, and of different types too
    (["Merkel", "Obama", "EU", "talks"], ["B-PER", "B-PER", "B-ORG", "O"]),
    # words with brackets in them, and words that ARE the delimiters (inside and outside entities)
    (["[", "1", "]", "(", "PER", ")", "a]b", "[x", "|", "AT|T", "\\[", "]"],
     ["O", "O", "O", "O", "O", "O", "B-MISC", "I-MISC", "O", "B-ORG", "O", "O"]),
    (["the", "[", "Bank", "|", "]", "said"], ["O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]),
    # no entity at all, and a one-word sentence
    (["nothing", "here", "."], ["O", "O", "O"]),
    (["Berlin"], ["B-LOC"]),
]


@pytest.mark.parametrize("tokens,tags", ROUND_TRIPS)
def test_render_then_parse_gives_the_tags_back(tokens, tags):
    text = render_inline(tokens, tags)
    parsed = parse_generated(text, tokens, TYPES)
    assert parsed == {"tags": tags, "malformed": False, "words_changed": False}, text


def test_the_target_brackets_entities_inline_with_spaced_delimiters():
    text = render_inline(["John", "Smith", "lives", "in", "Paris", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"])
    assert text == "[ John Smith | PER ] lives in [ Paris | LOC ] ."
    # a word that is a delimiter is escaped, one that only holds one is not
    assert render_inline(["[", "a]b", "|"], ["O", "B-PER", "O"]) == "\\[ [ a]b | PER ] \\|"


def test_a_stray_inside_tag_is_rendered_as_the_entity_conlleval_reads():
    tags = ["O", "I-PER", "I-PER", "O"]
    text = render_inline(["a", "b", "c", "d"], tags)
    assert text == "a [ b c | PER ] d"
    assert parse_generated(text, ["a", "b", "c", "d"], TYPES)["tags"] == ["O", "B-PER", "I-PER", "O"]
    assert spans(["O", "B-PER", "I-PER", "O"]) == spans(tags)


# ---- NER: outputs a model really writes ----------------------------------------------------------------
SOURCE = ["John", "Smith", "visited", "the", "U.S.", "in", "May", "."]


@pytest.mark.parametrize("output,tags,malformed,changed", [
    # a dropped word: the rest still aligns, the dropped word is O
    ("[ John Smith | PER ] visited [ U.S. | LOC ] in May .", ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O", "O"],
     False, True),
    # an entity whose first word was dropped still begins with B-
    ("[ Smith | PER ] visited the U.S. in May .", ["O", "B-PER", "O", "O", "O", "O", "O", "O"], False, True),
    # a changed word inside an entity (most of its characters match) keeps the entity
    ("[ Jon Smith | PER ] visited the U.S. in May .", ["B-PER", "I-PER", "O", "O", "O", "O", "O", "O"], False, True),
    # an extra word is skipped
    ("[ Mr John Smith | PER ] visited the U.S. in May . !", ["B-PER", "I-PER", "O", "O", "O", "O", "O", "O"],
     False, True),
    # a lower-casing tokenizer: the words count as the same
    ("[ john smith | per ] visited the u.s. in may .", ["B-PER", "I-PER", "O", "O", "O", "O", "O", "O"], False, False),
    # a tokenizer that decodes with spaces around punctuation
    ("[ John Smith | PER ] visited the [ U . S . | LOC ] in May .", ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O", "O"],
     False, True),
    # a type spread over tokens by decoding
    ("John Smith visited the [ U.S. | L OC ] in May .", ["O", "O", "O", "O", "B-LOC", "O", "O", "O"], False, False),
    # unknown type: malformed, its words plain, the type name no word
    ("[ John Smith | PERSON ] visited the U.S. in May .", ["O"] * 8, True, False),
    # never closed
    ("[ John Smith visited the U.S. in May .", ["O"] * 8, True, False),
    # a second bracket before the first closed: the inner entity counts
    ("[ John [ Smith | PER ] visited the U.S. in May .", ["O", "B-PER", "O", "O", "O", "O", "O", "O"], True, False),
    # a closing bracket or separator out of place, an empty entity
    ("John ] Smith | visited [ | PER ] the U.S. in May .", ["O"] * 8, True, False),
    # a separator without its closing bracket: the would-be type is a word
    ("[ John Smith | PER visited the U.S. in May .", ["O"] * 8, True, True),
    # nothing, or nothing of the source
    ("", ["O"] * 8, False, True),
    ("[ [ [ | | ] ] ]", ["O"] * 8, True, True),
    ("zzz qqq [ xxx | PER ]", ["O"] * 8, False, True),
])
def test_broken_outputs_parse_to_one_tag_per_source_word(output, tags, malformed, changed):
    assert parse_generated(output, SOURCE, TYPES) == {"tags": tags, "malformed": malformed, "words_changed": changed}


def test_parse_never_raises_on_arbitrary_text():
    import random

    rng = random.Random(0)
    alphabet = ["[", "]", "|", "\\[", "PER", "LOC", "John", "Smith", "the", ".", "U.S.", "", "  ", "[[", "|]"]
    for _ in range(500):
        text = " ".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        parsed = parse_generated(text, SOURCE, TYPES)
        assert len(parsed["tags"]) == len(SOURCE)
        assert all(t == "O" or t[2:] in TYPES for t in parsed["tags"])


def test_parse_inline_keeps_entity_numbers_apart():
    words, marks, malformed = parse_inline("[ A | PER ] [ B | PER ] C", TYPES)
    assert words == ["A", "B", "C"] and marks == [("PER", 1), ("PER", 2), None] and not malformed
    assert align_tags(["A", "B", "C"], words, marks) == (["B-PER", "B-PER", "O"], True)


# ---- RE: prompt and label parse ------------------------------------------------------------------------
LABELS = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other", "Product-Producer(e2,e1)"]


@pytest.mark.parametrize("output,label,parsed", [
    ("Cause-Effect(e2,e1)", "Cause-Effect(e2,e1)", True),
    ("  Other\n", "Other", True),
    ("cause-effect (e2, e1)", "Cause-Effect(e2,e1)", True),          # case and spaces
    ("Product_Producer(e2,e1).", "Other", False),                    # an underscore is no hyphen: no guess
    ('"Product-Producer(e2,e1)"', "Product-Producer(e2,e1)", True),   # quoted
    ("Cause-Effect(e1,e2)\nbecause the burst ...", "Cause-Effect(e1,e2)", True),  # first line
    ("Cause-Effect", "Other", False),                                 # no direction: not a label
    ("Cause-Effect(e1,e2) Other", "Other", False),
    ("", "Other", False),
])
def test_relation_labels_are_parsed_exact_then_normalised_else_other(output, label, parsed):
    assert parse_relation(output, LABELS, "Other") == (label, parsed)


def test_labels_equal_once_normalised_are_never_guessed_between():
    assert parse_relation("a(b)", ["A(B)", "a(B)"], "Other") == ("Other", False)
    assert parse_relation("a(B)", ["A(B)", "a(B)"], "Other") == ("a(B)", True)


def test_the_prompt_shows_the_entities_in_semeval_markup_that_reads_back():
    ex = {"text": "The company fabricates plastic chairs.", "head": [4, 11], "tail": [31, 37]}
    marked = inline_marked_text(ex)
    assert marked == "The <e1>company</e1> fabricates plastic <e2>chairs</e2>."
    assert parse_marked(marked) == (ex["text"], ex["head"], ex["tail"])
    tail_first = {"text": "chairs by the company", "head": [14, 21], "tail": [0, 6]}
    assert inline_marked_text(tail_first) == "<e2>chairs</e2> by the <e1>company</e1>"
