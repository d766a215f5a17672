"""The words a text query matched, marked in the results' title and description.

PostgreSQL's ``ts_headline`` finds them as the full-text leg matched them (stems, synonyms,
corrections); it marks them with two control characters that no query keeps
(``search.clean_query`` drops them) and that are dropped from the texts first, so the text can
be HTML-escaped whole and the marks turned into ``<mark>`` afterwards: the result is safe to
insert as HTML whatever the product's text holds.
"""

from __future__ import annotations

from django.db import models
from django.utils.html import escape

from clip_search.conf import clip_settings
from clip_search.query import ParsedQuery
from clip_search.registry import Registration
from clip_search.sql.highlight import headlines

START, STOP = "\x02", "\x03"
# The first text field (a title) is shown whole; the others (a description) as the fragments
# around their matches.
WHOLE = f"StartSel={START}, StopSel={STOP}, HighlightAll=true"
FRAGMENTS = f"StartSel={START}, StopSel={STOP}, MaxFragments=2, MaxWords=24, MinWords=10"


def fields(registration: Registration) -> list[str]:
    """The names of the text sources a result shows marked, in the registration's order: a
    field path ("title", "brand__name"), or a callable's name (Oscar's ``title``)."""
    return [source if isinstance(source, str) else getattr(source, "__name__", f"text{index}")
            for index, source in enumerate(registration.text)]


def highlight(registration: Registration, objects: list[models.Model], terms: ParsedQuery,
              using: str = "default") -> dict[str, dict[str, str]]:
    """{pk: {name: HTML}} for ``objects``: each text source's text as indexed (``fields``),
    escaped, the matched words in ``<mark>``."""
    names = fields(registration)
    if not terms.groups or not names:
        return {}
    texts, options, keys = [], [], []
    for obj in objects:
        parts = registration.text_parts(obj)
        for index, (name, (_weight, text)) in enumerate(zip(names, parts, strict=False)):
            texts.append(text.replace(START, "").replace(STOP, ""))
            options.append(WHOLE if index == 0 else FRAGMENTS)
            keys.append((str(obj.pk), name))
    marked = headlines(texts, options, terms, clip_settings.SEARCH["TEXT_SEARCH_CONFIG"], using=using)
    result: dict[str, dict[str, str]] = {}
    for (pk, name), text in zip(keys, marked, strict=True):
        result.setdefault(pk, {})[name] = to_html(text)
    return result


def to_html(marked: str) -> str:
    return escape(marked).replace(START, "<mark>").replace(STOP, "</mark>")
