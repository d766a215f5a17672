"""How simulated shoppers put what they want into words: the catalog's words and their own.

Shoppers do not write like catalog copywriters. They type "crimson knapsack" where every product
text says "red backpack", and a search that only knows the catalog's words (full text, the
vocabulary its spelling correction reads, a CLIP trained on the catalog's captions) finds them
nothing. The learning loop exists for these words: a shopper clicks the red backpacks the vector
leg still showed, and a model fine-tuned on (query, clicked image) pairs learns that crimson is
red. So the demo needs words no product text uses, fixed, and exposed for a bench to evaluate
on: ``SHOPPER_COLOURS`` and ``SHOPPER_NOUNS`` (``SHOPPER_WORDS`` maps each word to what it
means). ``tests/test_shoppers.py`` checks that no product text of the drawn catalog uses any of
them, as a word or as a stem, and that the search's spelling correction leaves them alone.

Words that looked right but are catalog words: "top" (roll-top, low-top), "tee", "flask",
"cap" (a bottle's screw cap), "parasol" and "brolly" (umbrellas), "rucksack". Words left out
because the search would "correct" them into a catalog word: "tshirt" (→ shirt).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from shop_demo.catalog.generator import BRANDS, CATEGORY_LABELS, COLOURS, SAFE_CATEGORIES, nouns

#: Colour words of shoppers, by the catalog colour they mean.
SHOPPER_COLOURS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "lime"),
    "blue": ("navy", "cobalt"),
    "yellow": ("mustard", "lemon"),
    "black": ("ebony", "onyx"),
    "white": ("ivory", "snowy"),
    "orange": ("tangerine", "apricot"),
    "purple": ("violet", "lilac"),
    "pink": ("fuchsia", "blush"),
    "brown": ("chocolate", "chestnut"),
}

#: What shoppers call the things the catalog sells, by category slug.
SHOPPER_NOUNS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("jersey",),
    "mug": ("beaker", "tumbler"),
    "sneaker": ("kicks", "plimsolls"),
    "backpack": ("knapsack", "tote"),
    "lamp": ("lantern",),
    "chair": ("armchair", "stool"),
    "watch": ("chronograph",),
    "hat": ("beanie", "panama"),
    "bottle": ("canteen", "thermos"),
    "umbrella": ("bumbershoot",),
}

#: Every shopper-only word and the catalog colour or category slug it means.
SHOPPER_WORDS: dict[str, str] = {
    word: meaning for table in (SHOPPER_COLOURS, SHOPPER_NOUNS) for meaning, words in table.items()
    for word in words}

# Keys next to each other on a QWERTY keyboard: the commonest typo replaces a letter by one of them.
_NEIGHBOURS = dict(zip("qwertyuiopasdfghjklzxcvbnm", (
    "wa", "qes", "wrd", "etf", "ryg", "tuh", "yij", "uok", "ipl", "ol", "qsz", "awdx", "sefc", "drgv",
    "fthb", "gyjn", "hukm", "jil", "kop", "xas", "zcsd", "xvdf", "cbfg", "vngh", "bmhj", "njk"), strict=True))


def words_of(text: str) -> list[str]:
    """The lower-case words of a text, as a shopper's eye (and a word search) splits them."""
    return re.findall(r"[a-z0-9]+", text.lower())


def shopper_words_in(texts: Iterable[str]) -> set[str]:
    """The shopper-only words that do occur, as whole words, in ``texts`` (should be none)."""
    found: set[str] = set()
    for text in texts:
        found |= SHOPPER_WORDS.keys() & set(words_of(text))
    return found


@dataclass(frozen=True)
class Intent:
    """What a shopper wants and never says in so many words: a colour and a category of the
    catalog, sometimes a brand."""

    colour: str
    category: str
    brand: str | None = None

    @property
    def kind(self) -> str:
        return "brand + colour + category" if self.brand else "colour + category"

    @classmethod
    def draw(cls, rng: random.Random, brand_rate: float) -> Intent:
        return cls(rng.choice(list(COLOURS)), rng.choice(SAFE_CATEGORIES),
                   rng.choice(BRANDS) if rng.random() < brand_rate else None)


@dataclass(frozen=True)
class Phrase:
    """A query as a shopper typed it, and what went into it."""

    text: str
    shopper_words: tuple[str, ...] = ()  # the shopper-only words it uses
    meant: str | None = None  # the words without their typo, when misspelt

    @property
    def misspelt(self) -> bool:
        return self.meant is not None

    @property
    def wording(self) -> str:
        if self.shopper_words:
            return "shopper words"
        return "catalog words, misspelt" if self.misspelt else "catalog words"


def colour_word(colour: str, rng: random.Random, own_words: float) -> str:
    return rng.choice(SHOPPER_COLOURS[colour]) if rng.random() < own_words else colour


def noun_word(category: str, rng: random.Random, own_words: float) -> str:
    """A shopper-only noun, or the catalog's: mostly its canonical noun, sometimes another of its
    nouns ("cup") or the plural a shopper types ("mugs")."""
    if rng.random() < own_words:
        return rng.choice(SHOPPER_NOUNS[category])
    draw = rng.random()
    if draw < 0.6:
        return category
    if draw < 0.8:
        return CATEGORY_LABELS[category].lower()
    return rng.choice(nouns(category)[1:])


def phrase(intent: Intent, rng: random.Random, *, own_words: float, misspell: float,
           colour: str | None = None, noun: str | None = None) -> Phrase:
    """Put ``intent`` into words: each of its colour and its category in a shopper's own word
    with probability ``own_words``; a brand as the catalog spells it (lower case, as often as
    not); a typo in a catalog word with probability ``misspell``. ``colour`` and ``noun`` force
    those words (a refinement keeps what it does not change)."""
    colour = colour or colour_word(intent.colour, rng, own_words)
    noun = noun or noun_word(intent.category, rng, own_words)
    brand = intent.brand and (intent.brand.lower() if rng.random() < 0.5 else intent.brand)
    order = rng.random()
    if brand:
        words = [brand, colour, noun] if order < 0.6 else [colour, noun, brand]
    else:
        words = [colour, noun] if order < 0.8 else [noun, colour]
    own = tuple(word for word in (colour, noun) if word in SHOPPER_WORDS)
    text = " ".join(words)
    if rng.random() < misspell:
        typo = misspelt(text, rng, keep=set(own))
        if typo != text:
            return Phrase(typo, own, meant=text)
    return Phrase(text, own)


def misspelt(text: str, rng: random.Random, keep: set[str] = frozenset()) -> str:
    """``text`` with one typo in one of its catalog words of five letters or more (a word the
    search can correct; ``keep``: words left alone): a letter dropped, doubled, swapped with the
    next, or replaced by a key next to it. ``text`` itself when no word qualifies."""
    words = text.split(" ")
    candidates = [i for i, word in enumerate(words) if len(word) >= 5 and word.isalpha() and word not in keep]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    at = rng.randrange(1, len(word) - 1)  # never the first letter: shoppers rarely get that wrong
    edit = rng.choice(("drop", "double", "swap", "neighbour"))
    if edit == "drop":
        typo = word[:at] + word[at + 1:]
    elif edit == "double":
        typo = word[:at] + word[at] + word[at:]
    elif edit == "swap":
        typo = word[:at] + word[at + 1] + word[at] + word[at + 2:]
    else:
        letter = word[at].lower()
        typo = word[:at] + rng.choice(_NEIGHBOURS.get(letter, letter)) + word[at + 1:]
    words[i] = typo
    return " ".join(words)


def refine(intent: Intent, previous: Phrase, rng: random.Random) -> Phrase:
    """What a shopper types after a page that showed nothing they wanted: the words without the
    typo, else one of their own words in the catalog's, else without the brand, else another
    noun for the same thing."""
    words = previous.text.split(" ")
    own = list(previous.shopper_words)
    if previous.meant is not None:
        return Phrase(previous.meant, previous.shopper_words)
    if own:
        dropped = rng.choice(own)
        kept = [word for word in own if word != dropped]
        return phrase(intent, rng, own_words=0.0, misspell=0.0,
                      colour=_said_colour(intent, kept), noun=_said_noun(intent, kept) or intent.category)
    if intent.brand and intent.brand.lower() in previous.text.lower():
        return phrase(Intent(intent.colour, intent.category), rng, own_words=0.0, misspell=0.0,
                      colour=intent.colour)
    others = [noun for noun in nouns(intent.category) if noun not in words]
    return phrase(intent, rng, own_words=0.0, misspell=0.0, colour=intent.colour,
                  noun=rng.choice(others) if others else intent.category)


def _said_colour(intent: Intent, own: list[str]) -> str:
    return next((word for word in own if SHOPPER_WORDS[word] == intent.colour), intent.colour)


def _said_noun(intent: Intent, own: list[str]) -> str | None:
    return next((word for word in own if SHOPPER_WORDS[word] == intent.category), None)


@dataclass(frozen=True)
class Seen:
    """What a shopper makes of a result: its colour (every drawn title names it; a shopper sees
    it in the photo), its category and its brand."""

    colour: str | None
    category: str | None
    brand: str

    @classmethod
    def of(cls, title: str, category: str, brand: str) -> Seen:
        """From the result's title, category label ("Mugs") and brand, as the API gives them."""
        colour = next((word for word in words_of(title) if word in COLOURS), None)
        slug = next((slug for slug, label in CATEGORY_LABELS.items() if label == category), None)
        return cls(colour, slug, brand)

    def grade(self, intent: Intent) -> int:
        """2: what the shopper wants; 1: the right colour and category, another brand than the
        one wanted; 0: anything else."""
        if (self.colour, self.category) != (intent.colour, intent.category):
            return 0
        return 2 if intent.brand in (None, self.brand) else 1


def evaluation_queries(products: Iterable[tuple[str, Seen]], *, shopper_only: bool = True
                       ) -> list[dict]:
    """Judged queries for an evaluation: one per (colour word, noun) of the lexicon
    (``shopper_only``; else the catalog's colour and canonical noun) whose colour × category some
    product has, as ``{"q": "crimson knapsack", "rel": {pk: 1, ...}}`` (clip_eval's JSONL lines).
    ``products``: (pk, Seen) pairs, e.g. from the shop's rows."""
    relevant: dict[tuple[str, str], dict[str, int]] = {}
    for pk, seen in products:
        if seen.colour and seen.category:
            relevant.setdefault((seen.colour, seen.category), {})[str(pk)] = 1
    queries = []
    for (colour, category), rel in sorted(relevant.items()):
        colours = SHOPPER_COLOURS[colour] if shopper_only else (colour,)
        category_words = SHOPPER_NOUNS.get(category, ()) if shopper_only else (category,)
        queries += [{"q": f"{c} {n}", "rel": rel} for c in colours for n in category_words]
    return queries
