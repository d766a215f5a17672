"""open_clip's CLIP BPE tokenizer (``SimpleTokenizer``) without torch.

``open_clip.tokenizer`` imports torch at module level (it returns tensors), and importing any
part of open_clip imports the package, torch included: a web process that answers queries from
a cached ONNX graph would load torch only to split words. This is the same algorithm on the
same merges file (read from the installed open_clip package without importing it), giving the
same ids as numpy ``int64``. ``tests/test_bpe.py`` holds it to open_clip's on many strings.

Only the plain mode is covered (``clean`` of ``lower`` / ``whitespace`` / ``canonicalize``, no
``reduction_mask``): that is what the CLIP text family uses; anything else keeps open_clip's.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import string
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

CLEAN_MODES = ("lower", "whitespace", "canonicalize")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def merges_file() -> Path:
    """``bpe_simple_vocab_16e6.txt.gz`` of the installed open_clip (found, not imported)."""
    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        raise ImportError("open_clip is not installed: its BPE merges file is needed.")
    return Path(next(iter(found.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache
def _byte_symbols() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (as ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def clean(text: str, mode: str) -> str:
    """open_clip's ``get_clean_fn(mode)``: ftfy, HTML entities twice, then the mode's rule."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if mode == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
        return " ".join(text.split())
    text = " ".join(text.split())
    return text.lower() if mode == "lower" else text


class ClipBpeTokenizer:
    """Token ids as ``open_clip.tokenizer.SimpleTokenizer(context_length=, clean=)`` gives them."""

    def __init__(self, *, context_length: int = 77, clean_mode: str = "lower") -> None:
        if clean_mode not in CLEAN_MODES:
            raise ValueError(f"clean must be one of {CLEAN_MODES}")
        lines = gzip.open(merges_file()).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        symbols = list(_byte_symbols().values())
        vocab = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.sot_token_id, self.eot_token_id = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]
        self.context_length, self.clean_mode = context_length, clean_mode
        self.pad_token_id = 0
        self._cache: dict[str, list[int]] = {}
        self._pattern = regex.compile(
            r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE)

    def _bpe(self, word: str) -> list[int]:
        """The ids of one pre-token (its bytes already mapped to symbols), merges applied by rank."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        if word in ("<start_of_text>", "<end_of_text>"):
            parts = [word]
        else:
            parts = [*word[:-1], word[-1] + "</w>"]
            while len(parts) > 1:
                pairs = set(zip(parts, parts[1:], strict=False))
                best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
                if best not in self.ranks:
                    break
                merged: list[str] = []
                i = 0
                while i < len(parts):
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
        ids = [self.encoder[part] for part in parts]
        if len(self._cache) < 100_000:  # queries repeat their words; bound it all the same
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of the text without the start / end tokens."""
        symbols = _byte_symbols()
        ids: list[int] = []
        for token in self._pattern.findall(clean(text, self.clean_mode)):
            ids.extend(self._bpe("".join(symbols[byte] for byte in token.encode("utf-8"))))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """(N, context_length) int64, zero-padded; a longer text is cut and ends with the end token."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        result = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            result[row, : len(ids)] = ids
        return result
