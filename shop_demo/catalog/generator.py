"""A deterministic, procedurally drawn product catalog.

It serves two purposes: training a small CLIP model on CPU (so images must be
cheap to draw, vary enough that retrieval is not trivial, and carry colour and
shape as the learnable signal) and filling the demo shop with plausible
products. Everything is derived from integer seeds, so the same catalog (and
the same pixels, for a given Pillow version) comes back on every machine.

Pure Python + Pillow + numpy; no Django imports, so training scripts and tests
can use it without settings.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from PIL import Image, ImageChops, ImageDraw

RGB = tuple[int, int, int]
Pair = tuple[str, str]  # (colour, category)

# --------------------------------------------------------------------------- vocabulary

#: Category slugs, in a fixed order (the order is part of the determinism contract).
CATEGORIES: tuple[str, ...] = (
    "t-shirt",
    "mug",
    "sneaker",
    "backpack",
    "lamp",
    "chair",
    "watch",
    "hat",
    "bottle",
    "umbrella",
    "knife",
)
#: Categories a moderation model must learn to flag; they never enter held-out pairs.
UNSAFE_CATEGORIES: tuple[str, ...] = ("knife",)
SAFE_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c not in UNSAFE_CATEGORIES)

#: Human-readable category names, e.g. for the shop's Category.name.
CATEGORY_LABELS: dict[str, str] = {
    "t-shirt": "T-shirts",
    "mug": "Mugs",
    "sneaker": "Sneakers",
    "backpack": "Backpacks",
    "lamp": "Lamps",
    "chair": "Chairs",
    "watch": "Watches",
    "hat": "Hats",
    "bottle": "Bottles",
    "umbrella": "Umbrellas",
    "knife": "Knives",
}
CATEGORY_CODES: dict[str, str] = {
    "t-shirt": "TSH",
    "mug": "MUG",
    "sneaker": "SNK",
    "backpack": "BPK",
    "lamp": "LMP",
    "chair": "CHR",
    "watch": "WCH",
    "hat": "HAT",
    "bottle": "BTL",
    "umbrella": "UMB",
    "knife": "KNF",
}

#: Named colours; the value fills the drawn object. Chosen to be far apart in RGB
#: so "red mug" vs "brown mug" is learnable from a few thousand images.
COLOURS: dict[str, RGB] = {
    "red": (205, 35, 40),
    "green": (40, 150, 65),
    "blue": (40, 85, 205),
    "yellow": (245, 205, 35),
    "black": (30, 30, 34),
    "white": (246, 246, 244),
    "orange": (245, 130, 30),
    "purple": (125, 55, 170),
    "pink": (240, 135, 185),
    "brown": (125, 80, 45),
}

#: Invented brands and their SKU prefixes.
BRAND_CODES: dict[str, str] = {
    "Nordvik": "NRD",
    "Alpenglow": "ALP",
    "Brightwell": "BRW",
    "Copperfield": "CPF",
    "Driftwood & Co": "DRW",
    "Emberly": "EMB",
    "Fjordline": "FJL",
    "Greystone": "GRS",
    "Halden": "HLD",
    "Ironbark": "IRB",
    "Juniper Lane": "JNL",
    "Kestrel": "KST",
}
BRANDS: tuple[str, ...] = tuple(BRAND_CODES)


@dataclass(frozen=True)
class _Vocab:
    nouns: tuple[str, ...]  # nouns[0] is the canonical word used in captions
    adjectives: tuple[str, ...]
    features: tuple[str, ...]
    price_range: tuple[int, int]  # whole currency units


_VOCAB: dict[str, _Vocab] = {
    "t-shirt": _Vocab(
        ("t-shirt", "tee", "shirt", "crew-neck tee"),
        ("cotton", "organic cotton", "relaxed-fit", "classic", "lightweight", "heavyweight"),
        (
            "Soft combed cotton that keeps its shape wash after wash.",
            "A relaxed fit with a ribbed crew neck.",
            "Pre-shrunk and garment dyed for a lived-in feel.",
        ),
        (12, 45),
    ),
    "mug": _Vocab(
        ("mug", "cup", "coffee mug", "tea cup"),
        ("ceramic", "stoneware", "glazed", "large", "handmade", "enamel"),
        (
            "Holds a generous 350 ml and is dishwasher safe.",
            "A chunky handle and a glossy glaze.",
            "Microwave safe and made to be used every morning.",
        ),
        (6, 25),
    ),
    "sneaker": _Vocab(
        ("sneaker", "trainer", "shoe", "running shoe"),
        ("canvas", "leather", "low-top", "lightweight", "retro", "cushioned"),
        (
            "A cushioned sole and breathable upper for all-day wear.",
            "Classic lace-up styling with a grippy rubber outsole.",
            "Light enough for a run, smart enough for the office.",
        ),
        (45, 180),
    ),
    "backpack": _Vocab(
        ("backpack", "rucksack", "daypack", "bag"),
        ("waterproof", "canvas", "roll-top", "compact", "travel", "padded"),
        (
            "A padded laptop sleeve and a zipped front pocket.",
            "Water-resistant fabric and comfortable shoulder straps.",
            "Room for a day's essentials, with a grab handle on top.",
        ),
        (30, 150),
    ),
    "lamp": _Vocab(
        ("lamp", "table lamp", "desk lamp", "light"),
        ("modern", "bedside", "minimalist", "dimmable", "vintage", "metal"),
        (
            "A fabric shade gives a soft, warm glow.",
            "Takes a standard E27 bulb; the base is weighted for stability.",
            "An easy way to brighten a desk or bedside table.",
        ),
        (20, 120),
    ),
    "chair": _Vocab(
        ("chair", "dining chair", "side chair", "seat"),
        ("wooden", "upholstered", "stackable", "Scandinavian", "sturdy", "modern"),
        (
            "A comfortable seat with a supportive backrest.",
            "Solid legs and a durable finish for everyday dining.",
            "Simple lines that fit around any table.",
        ),
        (40, 300),
    ),
    "watch": _Vocab(
        ("watch", "wristwatch", "timepiece", "analog watch"),
        ("analog", "classic", "sport", "minimalist", "quartz", "water-resistant"),
        (
            "A clean dial with easy-to-read hands and a comfortable strap.",
            "Quartz movement, water resistant to 50 metres.",
            "A slim case that slips under a shirt cuff.",
        ),
        (35, 400),
    ),
    "hat": _Vocab(
        ("hat", "fedora", "trilby", "felt hat"),
        ("felt", "wool", "wide-brim", "classic", "packable", "summer"),
        (
            "A wide brim and a grosgrain band around the crown.",
            "Shaped wool felt that keeps sun and drizzle off.",
            "A timeless silhouette that finishes any outfit.",
        ),
        (12, 60),
    ),
    "bottle": _Vocab(
        ("bottle", "water bottle", "drinking bottle", "flask"),
        ("insulated", "reusable", "stainless steel", "leak-proof", "sports", "BPA-free"),
        (
            "Keeps drinks cold for 24 hours and hot for 12.",
            "A leak-proof screw cap and a slim body that fits cup holders.",
            "Reusable, dishwasher safe and built to last.",
        ),
        (8, 40),
    ),
    "umbrella": _Vocab(
        ("umbrella", "brolly", "rain umbrella", "parasol"),
        ("windproof", "compact", "classic", "automatic", "large", "sturdy"),
        (
            "A windproof frame and a curved handle.",
            "Opens wide to keep two people dry.",
            "Quick-drying canopy fabric on a strong steel shaft.",
        ),
        (10, 50),
    ),
    "knife": _Vocab(
        ("knife", "blade", "kitchen knife", "chef's knife"),
        ("forged", "stainless steel", "full-tang", "razor-sharp", "carbon steel", "fixed-blade"),
        (
            "A razor-sharp steel blade with a full tang.",
            "The blade is honed to a keen edge; handle with care.",
            "A sharp knife with a sturdy, balanced handle.",
        ),
        (15, 120),
    ),
}

# Knife shapes; the style is picked from the seed so the drawing and the text agree.
_KNIFE_STYLES = ("kitchen", "combat")
_KNIFE_NOUNS = {
    "kitchen": ("kitchen knife", "chef's knife", "knife", "cook's knife"),
    "combat": ("combat knife", "hunting knife", "fixed-blade knife", "knife"),
}


def knife_style(seed: int) -> str:
    """Which knife is drawn for this seed, so titles can name the right kind of knife."""
    return _KNIFE_STYLES[seed % len(_KNIFE_STYLES)]


# --------------------------------------------------------------------------- the product


@dataclass(frozen=True)
class ProductSpec:
    """One catalog product; everything needed to create the shop row and draw its image."""

    sku: str
    title: str
    description: str
    brand: str
    category: str
    colour: str
    price: Decimal
    in_stock: bool
    is_public: bool
    seed: int

    @property
    def pair(self) -> Pair:
        """The (colour, category) combination, the unit of held-out evaluation."""
        return (self.colour, self.category)

    @property
    def is_unsafe(self) -> bool:
        return self.category in UNSAFE_CATEGORIES

    def draw(self, size: int = 224) -> Image.Image:
        """Render the product photo; identical pixels for identical specs."""
        return render_product(self.category, self.colour, self.seed, size)

    def png_bytes(self, size: int = 224) -> bytes:
        # Level 1: the pixel noise makes higher levels ~3x slower for ~12 % smaller files.
        buf = io.BytesIO()
        self.draw(size).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def jpeg_bytes(self, size: int = 224, quality: int = 90, view: int = 0) -> bytes:
        """The photo as a JPEG; ``view`` > 0 is another shot of the same product (the same
        category and colour, drawn from another seed), as a shop's gallery holds."""
        buf = io.BytesIO()
        image = self.draw(size) if not view else render_product(self.category, self.colour,
                                                                self.seed + 7919 * view, size)
        image.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


# --------------------------------------------------------------------------- catalog

_KNIFE_BLOCK = 20  # exactly one knife per block of 20 products -> a 5 % share without sampling noise
_IN_STOCK_RATE = 0.90
_PUBLIC_RATE = 0.97
_PRICE_ENDINGS = (Decimal("0.99"), Decimal("0.95"), Decimal("0.49"), Decimal("0.00"), Decimal("0.50"))


def all_pairs() -> list[Pair]:
    """Every (colour, category) combination, in a stable order."""
    return [(colour, category) for category in CATEGORIES for colour in COLOURS]


def _check_pairs(pairs: Iterable[Pair], name: str) -> set[Pair]:
    # A swapped tuple ("mug", "red") would silently exclude nothing; fail loudly instead.
    checked = set()
    for pair in pairs:
        colour, category = pair
        if colour not in COLOURS or category not in CATEGORIES:
            raise ValueError(f"{name}: {pair!r} is not a (colour, category) pair")
        checked.add((colour, category))
    return checked


class _Deck:
    """Deals pairs like a shuffled card deck, so combos stay balanced even for small n."""

    def __init__(self, pairs: Sequence[Pair], rng: random.Random) -> None:
        self._pairs = sorted(pairs)
        self._rng = rng
        self._hand: list[Pair] = []

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def deal(self) -> Pair:
        if not self._hand:
            self._hand = list(self._pairs)
            self._rng.shuffle(self._hand)
        return self._hand.pop()


def generate_catalog(
    n: int,
    seed: int = 0,
    exclude_pairs: set[Pair] | None = None,
    only_pairs: set[Pair] | None = None,
) -> list[ProductSpec]:
    """Generate n products, deterministic for (n, seed) and prefix-stable in n.

    ``exclude_pairs`` drops (colour, category) combinations (e.g. the held-out pairs
    for training); ``only_pairs`` restricts to the given ones (e.g. to build the
    held-out evaluation set). One product in 20 is a knife while knife pairs are allowed.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    allowed = set(all_pairs())
    if only_pairs is not None:
        allowed &= _check_pairs(only_pairs, "only_pairs")
    if exclude_pairs:
        allowed -= _check_pairs(exclude_pairs, "exclude_pairs")
    if not allowed and n:
        raise ValueError("no (colour, category) pairs left to generate")

    rng = random.Random(seed)
    safe = _Deck([p for p in allowed if p[1] not in UNSAFE_CATEGORIES], rng)
    unsafe = _Deck([p for p in allowed if p[1] in UNSAFE_CATEGORIES], rng)
    used_skus: set[str] = set()
    specs: list[ProductSpec] = []
    while len(specs) < n:
        knife_slot = rng.randrange(_KNIFE_BLOCK)
        for slot in range(_KNIFE_BLOCK):
            if len(specs) == n:
                break
            deck = unsafe if (slot == knife_slot and unsafe) or not safe else safe
            specs.append(_make_product(rng, *deck.deal(), used_skus))
    return specs


def _make_product(rng: random.Random, colour: str, category: str, used_skus: set[str]) -> ProductSpec:
    brand = rng.choice(BRANDS)
    for _ in range(1000):
        sku = f"{BRAND_CODES[brand]}-{CATEGORY_CODES[category]}-{rng.randrange(1, 100_000):05d}"
        if sku not in used_skus:
            break
    else:  # pragma: no cover - needs ~100k products of one brand and category
        raise RuntimeError(f"ran out of SKUs for {brand} {category}")
    used_skus.add(sku)
    lo, hi = _VOCAB[category].price_range
    price = (Decimal(rng.randint(lo, hi - 1)) + rng.choice(_PRICE_ENDINGS)).quantize(Decimal("0.01"))
    in_stock = rng.random() < _IN_STOCK_RATE
    is_public = rng.random() < _PUBLIC_RATE
    seed = rng.getrandbits(31)
    title, description = _texts(random.Random(seed ^ 0x5EED), brand, colour, category, seed)
    return ProductSpec(sku, title, description, brand, category, colour, price, in_stock, is_public, seed)


def _nouns(category: str, seed: int) -> tuple[str, ...]:
    return _KNIFE_NOUNS[knife_style(seed)] if category == "knife" else _VOCAB[category].nouns


def nouns(category: str) -> tuple[str, ...]:
    """The nouns product texts of ``category`` use, the canonical one first ("mug", "cup", ...)."""
    if category == "knife":
        return tuple(dict.fromkeys(noun for style in _KNIFE_STYLES for noun in _KNIFE_NOUNS[style]))
    return _VOCAB[category].nouns


def vocabulary_texts() -> list[str]:
    """Every piece of text the drawn catalog's titles and descriptions are made of, besides the
    templates' own words: nouns, adjectives, feature sentences, colours, brands, category labels
    and SKU codes. What a word no product text uses must be absent from."""
    texts = [*COLOURS, *BRANDS, *CATEGORY_LABELS.values(), *CATEGORY_CODES.values(), *BRAND_CODES.values()]
    for vocab in _VOCAB.values():
        texts += [*vocab.nouns, *vocab.adjectives, *vocab.features]
    for style_nouns in _KNIFE_NOUNS.values():
        texts += style_nouns
    return texts


def category_nouns(spec: ProductSpec) -> tuple[str, ...]:
    """Words for what ``spec`` is, the plain category slug first ("knife", not "chef's knife")."""
    nouns = _nouns(spec.category, spec.seed)
    return (spec.category, *(noun for noun in nouns if noun != spec.category))


def _texts(rng: random.Random, brand: str, colour: str, category: str, seed: int) -> tuple[str, str]:
    vocab = _VOCAB[category]
    noun = rng.choice(_nouns(category, seed))
    adj = rng.choice(vocab.adjectives)
    if category == "knife":
        titles = (
            f"{brand} {noun} with {colour} handle",
            f"{adj.capitalize()} {noun}, {colour} handle - {brand}",
            f"{brand} {adj} {noun} ({colour})",
        )
        descriptions = (
            f"A {adj} {noun} from {brand} with a {colour} handle and a sharp steel blade.",
            f"{brand}'s {noun}: a {colour} grip and a pointed blade. {rng.choice(vocab.features)}",
            f"{rng.choice(vocab.features)} This {noun} has a {colour} handle.",
        )
    else:
        titles = (
            f"{brand} {colour} {noun}",
            f"{colour.capitalize()} {adj} {noun} by {brand}",
            f"{brand} {adj} {noun} in {colour}",
            f"{brand} {noun} - {colour}",
        )
        descriptions = (
            f"A {adj} {colour} {noun} from {brand}. {rng.choice(vocab.features)}",
            f"{brand}'s {adj} {noun} in {colour}.",
            f"{rng.choice(vocab.features)} This {noun} comes in {colour}.",
            f"This {colour} {noun} by {brand} is {_article(adj)} {adj} everyday pick. "
            f"{rng.choice(vocab.features)}",
        )
    return rng.choice(titles), rng.choice(descriptions)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


_CAPTIONS = (
    "a photo of {a} {colour} {noun}",
    "{a} {colour} {noun}",
    "a product photo of {a} {colour} {noun}",
    "a picture of {a} {colour} {noun}",
    "{a} {colour} {noun} on a plain background",
)
_KNIFE_CAPTIONS = (
    "a photo of {a_noun} {noun} with {a} {colour} handle",
    "{a_noun} {noun} with {a} {colour} handle",
    "a product photo of {a_noun} {noun} with {a} {colour} handle",
)


def caption(spec: ProductSpec, variant: int = 0) -> str:
    """Short training caption such as "a photo of a red mug".

    Deterministic in (spec.seed, variant); pass a different ``variant`` per epoch to
    augment the text side. The canonical noun dominates so that plain queries
    ("a red mug") match, with synonyms ("cup") mixed in to teach them too.
    """
    rng = random.Random(spec.seed * 1009 + variant)
    nouns = _nouns(spec.category, spec.seed)
    noun = nouns[0] if rng.random() < 0.7 else rng.choice(nouns[1:])
    if spec.category == "knife":
        return rng.choice(_KNIFE_CAPTIONS).format(
            a_noun=_article(noun), noun=noun, a=_article(spec.colour), colour=spec.colour
        )
    return rng.choice(_CAPTIONS).format(a=_article(spec.colour), colour=spec.colour, noun=noun)


def heldout_pairs(seed: int = 0, share: float = 0.15) -> set[Pair]:
    """(colour, category) combinations to keep out of training for zero-shot evaluation.

    Takes ``share`` of the safe combinations (knives are never held out, moderation
    needs them all), spread evenly over colours and categories so every colour and
    every category keeps appearing in training in other combinations.
    """
    if not 0 <= share < 1:
        raise ValueError("share must be in [0, 1)")
    pairs = sorted(p for p in all_pairs() if p[1] not in UNSAFE_CATEGORIES)
    k = round(share * len(pairs))
    random.Random(seed).shuffle(pairs)
    colours, categories = len(COLOURS), len(SAFE_CATEGORIES)
    # Start with an even spread; relax only if the shuffle makes that impossible.
    cap_colour, cap_category = math.ceil(k / colours), math.ceil(k / categories)
    chosen: list[Pair] = []
    while len(chosen) < k:
        per_colour = {c: 0 for c in COLOURS}
        per_category = {c: 0 for c in SAFE_CATEGORIES}
        for colour, category in chosen:
            per_colour[colour] += 1
            per_category[category] += 1
        for pair in pairs:
            colour, category = pair
            if len(chosen) == k:
                break
            if pair in chosen or per_colour[colour] >= cap_colour or per_category[category] >= cap_category:
                continue
            chosen.append(pair)
            per_colour[colour] += 1
            per_category[category] += 1
        if cap_colour >= categories - 1 and cap_category >= colours - 1:
            break
        cap_colour = min(cap_colour + 1, categories - 1)
        cap_category = min(cap_category + 1, colours - 1)
    if len(chosen) < k:
        raise ValueError(f"share={share} leaves some colour or category without training pairs")
    return set(chosen)


# --------------------------------------------------------------------------- drawing

_SUPERSAMPLE = 2  # draw at 2x and box-filter down: cheap anti-aliasing
_MIN_BG_DISTANCE = 80.0  # RGB distance between background and object colour

_STEEL: RGB = (198, 204, 212)
_STEEL_LIGHT: RGB = (232, 236, 240)
_DARK_STEEL: RGB = (104, 108, 116)
_DARK: RGB = (50, 50, 55)
_NEUTRAL_OUTLINE: RGB = (70, 70, 76)
_OFF_WHITE: RGB = (244, 243, 238)


def _mix(colour: Sequence[int], other: Sequence[int], t: float) -> RGB:
    r, g, b = (round(a + (o - a) * t) for a, o in zip(colour, other, strict=True))
    return (r, g, b)


class _Frame:
    """Maps the unit box (0..1, y down) of a shape onto the canvas: scale, stretch, rotate, flip, move."""

    def __init__(self, rng: random.Random, canvas: int) -> None:
        scale = rng.uniform(0.6, 1.0)
        self.sx = rng.uniform(0.92, 1.08) * (-1 if rng.random() < 0.5 else 1)
        self.sy = rng.uniform(0.92, 1.08)
        angle = math.radians(rng.uniform(-10, 10))
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.box = scale * 0.78 * canvas
        # Keep the (rotated) box inside the frame with a margin: corners stay background.
        half = self.box / 2 * max(abs(self.sx), self.sy) * (abs(self.cos) + abs(self.sin))
        slack = max(0.0, canvas / 2 - 0.04 * canvas - half)
        self.cx = canvas / 2 + rng.uniform(-slack, slack)
        self.cy = canvas / 2 + rng.uniform(-slack, slack)

    def __call__(self, u: float, v: float) -> tuple[float, float]:
        x = (u - 0.5) * self.sx * self.box
        y = (v - 0.5) * self.sy * self.box
        return (self.cx + x * self.cos - y * self.sin, self.cy + x * self.sin + y * self.cos)

    def width(self, w: float) -> int:
        return max(1, round(w * self.box))


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list[tuple]:
    """Points on an ellipse arc in unit coordinates (degrees; y down, so 90 is the bottom)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in (a0 + (a1 - a0) * i / (n - 1) for i in range(n))
    ]


def _rounded_rect(x0: float, y0: float, x1: float, y1: float, r: float) -> list[tuple]:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    return (
        _arc(x1 - r, y0 + r, r, r, -90, 0, 5)
        + _arc(x1 - r, y1 - r, r, r, 0, 90, 5)
        + _arc(x0 + r, y1 - r, r, r, 90, 180, 5)
        + _arc(x0 + r, y0 + r, r, r, 180, 270, 5)
    )


class _Pen:
    """Records shapes in unit coordinates; rendering happens once the shape is complete.

    Fills are given as a role ("main", "shade", "light", "contrast") or an RGB accent.
    Only "main" parts receive the optional pattern, so accents stay recognisable.
    """

    def __init__(self, frame: _Frame, main: RGB) -> None:
        self.frame = frame
        luminance = 0.299 * main[0] + 0.587 * main[1] + 0.114 * main[2]
        self.roles: dict[str, RGB] = {
            "main": main,
            "shade": _mix(main, (0, 0, 0), 0.28) if luminance > 40 else _mix(main, (255, 255, 255), 0.15),
            "light": _mix(main, (255, 255, 255), 0.45),
            "contrast": _OFF_WHITE if luminance < 200 else (62, 62, 68),
        }
        self.outline = _mix(main, (0, 0, 0), 0.55) if luminance > 40 else (8, 8, 10)
        self.outline_width = frame.width(0.014)
        # (kind, points, fill, outline colour or None, is_main, width)
        self.ops: list[tuple[str, list[tuple[float, float]], RGB, RGB | None, bool, int]] = []

    def _fill(self, role: str | RGB) -> tuple[RGB, RGB, bool]:
        if isinstance(role, str):
            return self.roles[role], self.outline, role == "main"
        return role, _NEUTRAL_OUTLINE, False

    def poly(
        self, pts: Iterable[tuple[float, float]], role: str | RGB = "main", outline: bool = True
    ) -> None:
        fill, line, is_main = self._fill(role)
        self.ops.append(
            ("poly", [self.frame(u, v) for u, v in pts], fill, line if outline else None, is_main, 0)
        )

    def rect(self, x0: float, y0: float, x1: float, y1: float, role: str | RGB = "main", **kw: bool) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], role, **kw)

    def rrect(
        self, x0: float, y0: float, x1: float, y1: float, r: float, role: str | RGB = "main", **kw: bool
    ) -> None:
        self.poly(_rounded_rect(x0, y0, x1, y1, r), role, **kw)

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, role: str | RGB = "main", **kw: bool
    ) -> None:
        self.poly(_arc(cx, cy, rx, ry, 0, 360, 32)[:-1], role, **kw)

    def line(
        self, pts: Iterable[tuple[float, float]], width: float, role: str | RGB = "main", outline: bool = True
    ) -> None:
        fill, line, is_main = self._fill(role)
        points = [self.frame(u, v) for u, v in pts]
        self.ops.append(("line", points, fill, line if outline else None, is_main, self.frame.width(width)))

    def render(self, draw: ImageDraw.ImageDraw) -> None:
        ow = self.outline_width
        for kind, pts, fill, line, _, width in self.ops:
            if kind == "poly":
                draw.polygon(pts, fill=fill)
                if line:
                    draw.line([*pts, pts[0]], fill=line, width=ow)
            else:
                if line:
                    draw.line(pts, fill=line, width=width + 2 * ow, joint="curve")
                draw.line(pts, fill=fill, width=width, joint="curve")

    def render_main_mask(self, draw: ImageDraw.ImageDraw) -> None:
        """Where a pattern may go: main parts, minus outlines and anything drawn over them."""
        ow = self.outline_width
        for kind, pts, _, line, is_main, width in self.ops:
            ink = 255 if is_main else 0
            if kind == "poly":
                draw.polygon(pts, fill=ink)
                if line:
                    draw.line([*pts, pts[0]], fill=0, width=ow)
            else:
                if line:
                    draw.line(pts, fill=0, width=width + 2 * ow)
                draw.line(pts, fill=ink, width=width)


# Shapes. Each draws into the unit box, roughly filling it; rng adds small variations.


def _draw_tshirt(pen: _Pen, rng: random.Random) -> None:
    neck = rng.uniform(0.08, 0.12)
    sleeve = rng.uniform(-0.03, 0.03)
    neckline = _arc(0.5, 0.08, neck, rng.uniform(0.06, 0.1), 0, 180, 9)
    pen.poly(
        [
            *neckline,
            (0.24, 0.12),
            (0.03 - sleeve, 0.33),
            (0.13 - sleeve, 0.47),
            (0.25, 0.39),
            (0.25, 0.95),
            (0.75, 0.95),
            (0.75, 0.39),
            (0.87 + sleeve, 0.47),
            (0.97 + sleeve, 0.33),
            (0.76, 0.12),
        ]
    )
    pen.line(neckline, 0.03, "shade", outline=False)


def _draw_mug(pen: _Pen, rng: random.Random) -> None:
    h = rng.uniform(0.6, 0.74)
    top, bottom = 0.52 - h / 2, 0.52 + h / 2
    x0, x1 = 0.12, rng.uniform(0.62, 0.68)
    pen.line(_arc(x1, 0.52, 0.18, h * 0.27, -80, 80, 14), 0.075)
    pen.rrect(x0, top, x1, bottom, 0.07)
    cx, rx = (x0 + x1) / 2, (x1 - x0) / 2
    pen.ellipse(cx, top, rx, 0.05, "light")
    pen.ellipse(cx, top + 0.008, rx - 0.035, 0.032, "shade", outline=False)


def _draw_sneaker(pen: _Pen, rng: random.Random) -> None:
    collar = rng.uniform(0.28, 0.34)
    pen.poly(
        [
            (0.05, 0.74),
            (0.05, 0.42),
            (0.10, collar),
            (0.18, collar - 0.02),
            (0.27, 0.40),
            (0.38, 0.42),
            (0.43, 0.28),
            (0.52, 0.26),
            (0.56, 0.36),
            (0.70, 0.46),
            (0.86, 0.52),
            (0.94, 0.58),
            (0.97, 0.66),
            (0.96, 0.74),
        ]
    )
    pen.poly([(0.22, 0.64), (0.50, 0.50), (0.74, 0.58), (0.72, 0.62), (0.40, 0.66)], "light")
    for i in range(3):  # laces cross the slope of the tongue
        x, y = 0.555 + i * 0.055, 0.405 + i * 0.04
        pen.line([(x + 0.025, y - 0.035), (x - 0.025, y + 0.035)], 0.02, "contrast", outline=False)
    pen.rrect(0.03, 0.71, 0.98, 0.83, 0.05, "contrast")
    pen.line([(0.08, 0.79), (0.93, 0.79)], 0.012, "shade", outline=False)


def _draw_backpack(pen: _Pen, rng: random.Random) -> None:
    w = rng.uniform(0.28, 0.32)
    pen.line([(0.40, 0.18), (0.42, 0.06), (0.58, 0.06), (0.60, 0.18)], 0.045, "shade")
    pen.rrect(0.5 - w - 0.05, 0.24, 0.5 - w + 0.04, 0.82, 0.03, "shade")
    pen.rrect(0.5 + w - 0.04, 0.24, 0.5 + w + 0.05, 0.82, 0.03, "shade")
    pen.rrect(0.5 - w, 0.14, 0.5 + w, 0.94, 0.16)
    pen.line(_arc(0.5, 0.40, w - 0.05, 0.2, 200, 340, 12), 0.018, "shade", outline=False)
    pen.rrect(0.5 - w + 0.09, 0.56, 0.5 + w - 0.09, 0.88, 0.07)
    pen.line([(0.5 - w + 0.13, 0.63), (0.5 + w - 0.13, 0.63)], 0.018, "shade", outline=False)


def _draw_lamp(pen: _Pen, rng: random.Random) -> None:
    top_w, bottom_w = rng.uniform(0.14, 0.2), rng.uniform(0.32, 0.38)
    pen.rect(0.475, 0.44, 0.525, 0.86, _DARK_STEEL)
    pen.rrect(0.27, 0.84, 0.73, 0.95, 0.04)
    pen.poly([(0.5 - top_w, 0.06), (0.5 + top_w, 0.06), (0.5 + bottom_w, 0.46), (0.5 - bottom_w, 0.46)])
    pen.line([(0.5 - bottom_w + 0.02, 0.43), (0.5 + bottom_w - 0.02, 0.43)], 0.025, "shade", outline=False)


def _draw_chair(pen: _Pen, rng: random.Random) -> None:
    back_top = rng.uniform(0.04, 0.1)
    for x in (0.31, 0.69):
        pen.line([(x, 0.62), (x, 0.9)], 0.045, "shade")
    for x in (0.33, 0.67):
        pen.line([(x, 0.40), (x, 0.56)], 0.045)
    pen.rrect(0.27, back_top, 0.73, 0.44, 0.05)
    pen.line([(0.34, 0.2), (0.66, 0.2)], 0.02, "shade", outline=False)
    pen.poly([(0.27, 0.52), (0.73, 0.52), (0.85, 0.66), (0.15, 0.66)])
    pen.rect(0.15, 0.66, 0.85, 0.72, "shade")
    pen.line([(0.19, 0.71), (0.17, 0.97)], 0.055)
    pen.line([(0.81, 0.71), (0.83, 0.97)], 0.055)


def _draw_watch(pen: _Pen, rng: random.Random) -> None:
    strap = rng.uniform(0.13, 0.15)
    pen.poly(
        [
            (0.5 - strap, 0.0),
            (0.5 + strap, 0.0),
            (0.5 + strap - 0.02, 0.5),
            (0.5 + strap, 1.0),
            (0.5 - strap, 1.0),
            (0.5 - strap + 0.02, 0.5),
        ]
    )
    for y in (0.82, 0.88, 0.94):
        pen.ellipse(0.5, y, 0.014, 0.014, "shade", outline=False)
    pen.rect(0.74, 0.46, 0.8, 0.54, _DARK_STEEL)
    pen.ellipse(0.5, 0.5, 0.27, 0.27)
    pen.ellipse(0.5, 0.5, 0.19, 0.19, _OFF_WHITE)

    def polar(angle: float, r: float) -> tuple[float, float]:
        return (0.5 + r * math.cos(angle), 0.5 + r * math.sin(angle))

    for i in range(12):
        a = math.radians(i * 30)
        pen.line([polar(a, 0.15 if i % 3 else 0.13), polar(a, 0.17)], 0.012, _DARK, outline=False)
    hour, minute = rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)
    pen.line([(0.5, 0.5), polar(hour, 0.09)], 0.02, _DARK, outline=False)
    pen.line([(0.5, 0.5), polar(minute, 0.14)], 0.014, _DARK, outline=False)


def _draw_hat(pen: _Pen, rng: random.Random) -> None:
    crown_top = rng.uniform(0.2, 0.28)
    pen.ellipse(0.5, 0.72, 0.47, rng.uniform(0.11, 0.15))
    pen.poly(
        [
            (0.25, 0.74),
            (0.28, crown_top + 0.12),
            (0.31, crown_top + 0.04),
            (0.40, crown_top),
            (0.50, crown_top + 0.05),
            (0.60, crown_top),
            (0.69, crown_top + 0.04),
            (0.72, crown_top + 0.12),
            (0.75, 0.74),
        ]
    )
    pen.poly([(0.255, 0.62), (0.745, 0.62), (0.75, 0.72), (0.25, 0.72)], "shade")


def _draw_bottle(pen: _Pen, rng: random.Random) -> None:
    half = rng.uniform(0.17, 0.21)
    pen.rrect(0.39, 0.03, 0.61, 0.14, 0.02, "shade")
    pen.rect(0.42, 0.13, 0.58, 0.22)
    pen.poly(
        [
            (0.42, 0.2),
            (0.58, 0.2),
            (0.5 + half, 0.32),
            (0.5 + half, 0.92),
            (0.5 + half - 0.04, 0.96),
            (0.5 - half + 0.04, 0.96),
            (0.5 - half, 0.92),
            (0.5 - half, 0.32),
        ]
    )
    pen.rect(0.5 - half, 0.52, 0.5 + half, 0.72, "light")
    pen.line([(0.5 - half + 0.06, 0.36), (0.5 - half + 0.06, 0.48)], 0.025, "light", outline=False)


def _draw_umbrella(pen: _Pen, rng: random.Random) -> None:
    ribs = rng.choice((4, 5, 6))
    pen.line([(0.5, 0.05), (0.5, 0.86)], 0.026, _DARK, outline=False)
    pen.line(_arc(0.43, 0.86, 0.07, 0.07, 0, 180, 10), 0.032, _DARK, outline=False)
    edge = [0.03 + 0.94 * i / ribs for i in range(ribs, -1, -1)]  # right to left
    scallops: list[tuple] = []
    for right, left in zip(edge, edge[1:], strict=False):
        scallops += _arc((right + left) / 2, 0.52, (right - left) / 2, 0.05, 0, -180, 8)
    pen.poly(_arc(0.5, 0.52, 0.47, 0.42, 180, 360, 24) + scallops)
    for x in edge[1:-1]:
        pen.line([(0.5, 0.11), (x, 0.52)], 0.012, "shade", outline=False)


def _draw_knife(pen: _Pen, rng: random.Random, style: str) -> None:
    if style == "kitchen":
        pen.rrect(0.02, 0.45, 0.37, 0.65, 0.07)
        for x in (0.10, 0.19, 0.28):
            pen.ellipse(x, 0.55, 0.017, 0.017, _STEEL_LIGHT, outline=False)
        pen.rect(0.35, 0.43, 0.40, 0.67, _DARK_STEEL)
        tip = rng.uniform(0.44, 0.48)
        pen.poly(
            [(0.40, 0.39), (0.78, 0.39), (0.98, tip), (0.90, 0.53), (0.74, 0.60), (0.56, 0.64), (0.40, 0.65)],
            _STEEL,
        )
        pen.line([(0.41, 0.63), (0.56, 0.62), (0.74, 0.58), (0.9, 0.51)], 0.012, _STEEL_LIGHT, outline=False)
    else:
        pen.rrect(0.02, 0.43, 0.09, 0.67, 0.02, _DARK_STEEL)
        pen.rrect(0.07, 0.44, 0.41, 0.66, 0.04)
        for i in range(5):
            x = 0.13 + i * 0.055
            pen.line([(x, 0.45), (x, 0.65)], 0.016, "shade", outline=False)
        pen.rrect(0.40, 0.33, 0.45, 0.77, 0.02, _DARK_STEEL)
        teeth = [(0.47 + i * 0.03, 0.42 - 0.025 * (i % 2)) for i in range(7)]
        pen.poly(
            [
                *teeth,
                (0.76, 0.43),
                (0.86, 0.46),
                (0.99, 0.48),
                (0.92, 0.54),
                (0.82, 0.59),
                (0.70, 0.61),
                (0.45, 0.61),
            ],
            _STEEL,
        )
        pen.line([(0.49, 0.51), (0.74, 0.51)], 0.02, _DARK_STEEL, outline=False)


_DRAWERS: dict[str, Callable[[_Pen, random.Random], None]] = {
    "t-shirt": _draw_tshirt,
    "mug": _draw_mug,
    "sneaker": _draw_sneaker,
    "backpack": _draw_backpack,
    "lamp": _draw_lamp,
    "chair": _draw_chair,
    "watch": _draw_watch,
    "hat": _draw_hat,
    "bottle": _draw_bottle,
    "umbrella": _draw_umbrella,
}


def _background_colour(rng: random.Random, attempt: int) -> RGB:
    lightness = rng.uniform(0.80, 0.95) - 0.04 * attempt  # darker after failures: white objects need it
    r, g, b = colorsys.hls_to_rgb(rng.random(), lightness, rng.uniform(0.06, 0.45))
    return (round(r * 255), round(g * 255), round(b * 255))


def _background(rng: random.Random, main: RGB, canvas: int) -> Image.Image:
    """A light plain or softly graded backdrop that never swallows the object colour."""
    for attempt in range(12):
        first = _background_colour(rng, attempt)
        second = _mix(first, [rng.randint(0, 255) for _ in range(3)], rng.uniform(0.1, 0.2))
        if min(math.dist(first, main), math.dist(second, main)) >= _MIN_BG_DISTANCE:
            break
    if rng.random() < 0.5:
        return Image.new("RGB", (canvas, canvas), first)
    # Linear gradient along a random direction, computed on a tiny grid and upscaled.
    angle = rng.uniform(0, 2 * math.pi)
    grid = np.linspace(-0.5, 0.5, 8)
    t = np.clip(0.5 + grid[None, :] * math.cos(angle) + grid[:, None] * math.sin(angle), 0, 1)
    small = np.array(first, float) + t[..., None] * (np.array(second, float) - np.array(first, float))
    return Image.fromarray(small.round().astype(np.uint8)).resize((canvas, canvas), Image.Resampling.BILINEAR)


def _pattern_mask(pen: _Pen, rng: random.Random, canvas: int) -> Image.Image:
    """Stripes or dots in the object's own frame, so they rotate and scale with it."""
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    frame = pen.frame
    spacing = rng.uniform(0.1, 0.14)
    offsets = [-0.2 + i * spacing for i in range(int(1.4 / spacing) + 1)]
    if rng.random() < 0.6:
        width = frame.width(spacing * 0.28)
        slant = rng.choice((0.0, 0.0, 0.5, -0.5))
        vertical = rng.random() < 0.5
        for o in offsets:
            ends = [(o - slant * 0.7, -0.2), (o + slant * 0.7, 1.2)]
            draw.line([frame(*((v, u) if not vertical else (u, v))) for u, v in ends], fill=255, width=width)
    else:
        r = frame.width(spacing * 0.2)
        for u in offsets:
            for v in offsets:
                x, y = frame(u, v)
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return mask


def render_product(category: str, colour: str, seed: int, size: int = 224) -> Image.Image:
    """Draw a product photo: the shape of ``category`` filled with ``colour``, varied by ``seed``."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}")
    if size < 8:
        raise ValueError("size must be >= 8")
    main = COLOURS[colour]
    rng = random.Random(seed)
    canvas = size * _SUPERSAMPLE
    frame = _Frame(rng, canvas)
    image = _background(rng, main, canvas)
    pen = _Pen(frame, main)
    if category == "knife":
        _draw_knife(pen, rng, knife_style(seed))
    else:
        _DRAWERS[category](pen, rng)
    pen.render(ImageDraw.Draw(image))

    if rng.random() < 0.35:
        main_mask = Image.new("L", (canvas, canvas), 0)
        pen.render_main_mask(ImageDraw.Draw(main_mask))
        pattern = ImageChops.multiply(_pattern_mask(pen, rng, canvas), main_mask)
        luminance = 0.299 * main[0] + 0.587 * main[1] + 0.114 * main[2]
        darker = luminance > 200 or (luminance > 40 and rng.random() < 0.5)
        tint = _mix(main, (0, 0, 0), 0.22) if darker else _mix(main, (255, 255, 255), 0.3)
        image.paste(tint, (0, 0, canvas, canvas), pattern)

    image = image.reduce(_SUPERSAMPLE)
    amplitude = rng.randint(2, 7)
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, (size, size, 3), dtype=np.int16)
    pixels = np.asarray(image, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
