"""Reading a query before the legs run: websearch syntax, keyword values inside it, spelling."""

from __future__ import annotations

import pytest

from clip_search.lexicon import allowed_edits, edit_distance
from clip_search.query import Term, keyword_query, ngrams, parse


def test_parse_keeps_websearch_syntax():
    parsed = parse('Red "Tea Cup" -plastic or glass "unterminated')
    assert parsed.groups == (
        (Term("red"),), (Term("tea cup", phrase=True),),
        (Term("plastic", negated=True), Term("glass")), (Term("unterminated", phrase=True),))
    assert parsed.text() == 'red "tea cup" -plastic or glass "unterminated"'
    assert parsed.words() == ["red", "glass"]
    assert parse('or or "" ...').groups == ()


def test_corrections_are_written_back_into_the_query():
    parsed = parse("red umbrela")
    umbrela = parsed.groups[1][0]
    fixed = parsed.replace_terms({umbrela: Term("umbrela", corrected="umbrella")})
    assert fixed.text() == "red umbrella" and fixed.text(corrected=False) == "red umbrela"


def test_keyword_values_are_looked_for_inside_the_query():
    assert ngrams("Driftwood & Co yellow hat")[:5] == ["driftwood", "&", "co", "yellow", "hat"]
    assert "driftwood & co" in ngrams("Driftwood & Co yellow hat")
    query = keyword_query("NRD-MUG-01234 red")
    assert query.boosted == ["nrd-mug-01234 red", "nrd-mug-01234"]  # whole query, identifiers
    assert "red" in query.phrases and "nrd-mug-01234" not in query.phrases


@pytest.mark.parametrize("a, b, edits", [
    ("umbrela", "umbrella", 1), ("bakcpack", "backpack", 1), ("chiar", "chair", 1),
    ("wristwach", "wristwatch", 1), ("backpack", "backpack", 0), ("sneeker", "sneaker", 1),
    ("ubmrella", "umbrella", 1), ("mug", "hat", 3),
])
def test_edit_distance_counts_a_swap_as_one(a, b, edits):
    assert edit_distance(a, b, 3) == min(edits, 4)


def test_the_typos_allowed_grow_with_the_word():
    words = ("mug", "lamp", "chair", "backpacks", "umbrellas")
    assert [allowed_edits(word) for word in words] == [0, 0, 1, 2, 2]
