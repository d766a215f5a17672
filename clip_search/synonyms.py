"""Shop-managed synonyms: what they mean to a query, and the file they are kept in.

The file format is Solr's ``synonyms.txt``, which search engines and the tools that feed them
already write: one set per line, ``#`` comments, ``crimson, scarlet, red`` (multi-way: any of
them finds all) and ``rucksack, knapsack => backpack`` (one-way: the words on the left also
find the ones on the right). Terms are lower-cased; a term may be a phrase ("rain umbrella").

Each process keeps the sets it read for ``SEARCH["SYNONYMS_CACHE_SECONDS"]``; a save or a delete
clears the cache of the process that made it, so an edit in the admin is seen at once there and
within that many seconds everywhere else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from clip_search.conf import clip_settings
from clip_search.models import Synonym

Mapping = dict[str, tuple[str, ...]]
ARROW = "=>"


class SynonymFileError(ValueError):
    """A line of a synonyms file cannot be read; the message names the line."""


@dataclass(frozen=True)
class SynonymLine:
    terms: tuple[str, ...]
    synonyms: tuple[str, ...] = ()  # one-way targets; empty for a multi-way set


def _values(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(" ".join(v.split()).lower() for v in text.split(",") if v.strip()))


def parse_line(line: str, number: int = 0) -> SynonymLine | None:
    """One line of the file; None for a blank line or a comment."""
    line = line.split("#", 1)[0].strip()
    if not line:
        return None
    where = f"line {number}: " if number else ""
    if line.count(ARROW) > 1:
        raise SynonymFileError(f"{where}more than one '{ARROW}'")
    left, arrow, right = line.partition(ARROW)
    terms, targets = _values(left), _values(right)
    if arrow and (not terms or not targets):
        raise SynonymFileError(f"{where}'{ARROW}' needs words on both sides")
    if not arrow and len(terms) < 2:
        raise SynonymFileError(f"{where}a set needs two words or more (or 'word {ARROW} meaning')")
    if any(len(value) > 100 for value in (*terms, *targets)):
        raise SynonymFileError(f"{where}a term is longer than 100 characters")
    return SynonymLine(terms, targets)


def parse_file(text: str) -> list[SynonymLine]:
    """Every set of a synonyms file; SynonymFileError names the first bad line."""
    return [parsed for number, line in enumerate(text.splitlines(), 1)
            if (parsed := parse_line(line, number)) is not None]


def format_line(synonym: Synonym | SynonymLine) -> str:
    line = ", ".join(synonym.terms)
    return f"{line} {ARROW} {', '.join(synonym.synonyms)}" if synonym.synonyms else line


def export_file(synonyms: Iterable[Synonym] | None = None) -> str:
    """The enabled sets as a synonyms file (what ``import_file`` reads back)."""
    sets = Synonym.objects.filter(enabled=True) if synonyms is None else synonyms
    return "".join(f"{format_line(synonym)}\n" for synonym in sets)


@transaction.atomic
def import_file(text: str, *, replace: bool = False) -> int:
    """Add the file's sets (``replace``: instead of the existing ones); returns how many were
    added. A set already present is not added twice. Nothing changes if a line is bad."""
    lines = parse_file(text)
    if replace:
        Synonym.objects.all().delete()
    existing = {(tuple(s.terms), tuple(s.synonyms)) for s in Synonym.objects.all()}
    new = [Synonym(terms=list(line.terms), synonyms=list(line.synonyms)) for line in lines
           if (line.terms, line.synonyms) not in existing]
    Synonym.objects.bulk_create(new)
    forget()
    return len(new)


def mapping(sets: Iterable[Synonym | SynonymLine]) -> Mapping:
    """term → the other forms it also matches, over all ``sets``."""
    found: dict[str, dict[str, None]] = {}
    for synonym in sets:
        for term in synonym.terms:
            targets = synonym.synonyms or [other for other in synonym.terms if other != term]
            found.setdefault(term, {}).update(dict.fromkeys(t for t in targets if t != term))
    return {term: tuple(targets) for term, targets in found.items() if targets}


_lock = threading.Lock()
_cache: tuple[float, Mapping] | None = None


def current(using: str = "default") -> Mapping:
    """The enabled sets as a mapping, from this process's cache when it is fresh."""
    global _cache
    ttl = clip_settings.SEARCH["SYNONYMS_CACHE_SECONDS"]
    with _lock:
        if _cache is not None and time.monotonic() - _cache[0] < ttl:
            return _cache[1]
    found = mapping(Synonym.objects.db_manager(using).filter(enabled=True))
    with _lock:
        _cache = (time.monotonic(), found)
    return found


def forget() -> None:
    global _cache
    with _lock:
        _cache = None


@receiver([post_save, post_delete], sender=Synonym, dispatch_uid="clip_search.synonyms.forget")
def _changed(**kwargs) -> None:
    forget()
