"""What a text query says, before any leg runs: its terms, the keyword values it names, the
words it misspells and the synonyms the shop gave them.

The query keeps PostgreSQL's ``websearch_to_tsquery`` syntax (``"a phrase"``, ``-word``,
``or``), parsed here into AND-ed groups of OR-ed terms, so that each term can carry the forms
that also match it (its spelling correction, its synonyms) before ``sql`` turns them into one
``tsquery``. The keyword leg gets the query's word n-grams: a brand inside a longer query
("Driftwood & Co yellow hat") is a keyword value as much as a whole-query SKU is, but it counts
only for products the other words find too (``sql``: a brand alone would lift every product of
that brand over the yellow hats of the others).

Nothing here reads the database: ``search`` asks ``lexicon.analyse`` which words the catalog
knows and how the others are corrected, and ``synonyms.expand`` for the synonyms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

# A quoted phrase (the closing quote optional, as websearch_to_tsquery reads it), or a word.
_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
# What is stripped from the ends of a word before it is compared with the catalog's words
# and keyword values; inside a word ("t-shirt", "e27", "chef's") characters stay.
_EDGE_PUNCTUATION = ".,;:!?()[]{}\"'`«»“”‘’"
# Longest keyword value looked for inside a query, in words ("Driftwood & Co" is three).
MAX_PHRASE_WORDS = 4


@dataclass(frozen=True)
class Term:
    """A word or a quoted phrase of the query, and the other forms that match it."""

    text: str  # as typed, lower-cased (a phrase without its quotes)
    phrase: bool = False
    negated: bool = False
    # Other forms matched in its place: a spelling correction replaces the word (it matches
    # nothing), synonyms are added to it.
    corrected: str | None = None
    synonyms: tuple[str, ...] = ()

    @property
    def forms(self) -> tuple[str, ...]:
        """Every form the text legs match for this term, the searched one first."""
        return tuple(dict.fromkeys((self.corrected or self.text, *self.synonyms)))


@dataclass(frozen=True)
class ParsedQuery:
    """The query as AND-ed groups of OR-ed terms (websearch syntax)."""

    groups: tuple[tuple[Term, ...], ...]

    @property
    def terms(self) -> list[Term]:
        return [term for group in self.groups for term in group]

    def words(self) -> list[str]:
        """The plain words (not phrases, not negated) a spelling check may look at."""
        return [term.text for term in self.terms if not term.phrase and not term.negated]

    def replace_terms(self, change: dict[Term, Term]) -> ParsedQuery:
        return ParsedQuery(tuple(tuple(change.get(term, term) for term in group) for group in self.groups))

    def text(self, *, corrected: bool = True) -> str:
        """The query written back (``corrected``: with its corrections), e.g. for did-you-mean
        and for the CLIP text encoder."""
        parts = []
        for group in self.groups:
            written = []
            for term in group:
                value = (term.corrected or term.text) if corrected else term.text
                value = f'"{value}"' if term.phrase else value
                written.append(f"-{value}" if term.negated else value)
            parts.append(" or ".join(written))
        return " ".join(parts)


def strip_word(word: str) -> str:
    return word.strip(_EDGE_PUNCTUATION)


def parse(text: str) -> ParsedQuery:
    """``red "tea cup" -plastic or glass`` → [[red], ["tea cup"], [-plastic, glass]].

    As ``websearch_to_tsquery``: ``or`` joins the terms either side of it, a leading ``-``
    negates, quotes make a phrase. Words keep their inner punctuation ("t-shirt").
    """
    groups: list[list[Term]] = []
    pending_or = False
    for match in _TOKEN.finditer(text.lower()):
        minus, quoted, word = match.groups()
        if word is not None and word == "or":
            pending_or = bool(groups)
            continue
        if quoted is not None:
            value = " ".join(quoted.split())
            term = Term(value, phrase=True, negated=bool(minus)) if value else None
        else:
            negated = word.startswith("-") and len(word) > 1
            value = strip_word(word[1:] if negated else word)
            term = Term(value, negated=negated) if value else None
        if term is None:
            continue
        if pending_or and not term.negated:
            groups[-1].append(term)
        else:
            groups.append([term])
        pending_or = False
    return ParsedQuery(tuple(tuple(group) for group in groups))


@dataclass
class KeywordQuery:
    """What the keyword leg matches: values that outrank everything when matched exactly
    (the whole query, an identifier such as a SKU), and values named inside a longer query (a
    brand), which count only for products the query's other words also find."""

    boosted: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> list[str]:
        return list(dict.fromkeys(self.boosted + self.phrases))


def is_identifier(word: str) -> bool:
    """A word with a digit in it: a SKU, a model number, a size."""
    return any(character.isdigit() for character in word)


def ngrams(text: str, longest: int = MAX_PHRASE_WORDS) -> list[str]:
    """Every run of 1..``longest`` consecutive words, as keyword values are stored (lower-cased,
    single-spaced): "driftwood & co hat" → "driftwood", "driftwood &", "driftwood & co", ..."""
    words = [w for w in (strip_word(word) for word in text.lower().split()) if w]
    return [" ".join(words[start:start + size]) for size in range(1, longest + 1)
            for start in range(len(words) - size + 1)]


def keyword_query(text: str, synonyms: dict[str, tuple[str, ...]] | None = None,
                  limit: int = 200) -> KeywordQuery:
    """The keyword leg's values for ``text`` (see ``KeywordQuery``), with the synonyms of each
    (``synonyms`` maps a lower-cased value to its other forms)."""
    synonyms = synonyms or {}
    whole = " ".join(text.lower().split())
    boosted = [whole] + [word for word in ngrams(text, 1) if is_identifier(word)]
    phrases = [gram for gram in ngrams(text) if gram not in boosted]

    def expanded(values: list[str]) -> list[str]:
        return [v[:limit] for value in values for v in (value, *synonyms.get(value, ())) if v]

    query = KeywordQuery(expanded(boosted), [])
    query.phrases = [value for value in expanded(phrases) if value not in query.boosted]
    return query


def with_synonyms(parsed: ParsedQuery, synonyms: dict[str, tuple[str, ...]]) -> ParsedQuery:
    """Each positive term with the synonyms of its searched form."""
    change = {}
    for term in parsed.terms:
        found = synonyms.get(term.corrected or term.text, ())
        if found and not term.negated:
            change[term] = replace(term, synonyms=found)
    return parsed.replace_terms(change) if change else parsed
