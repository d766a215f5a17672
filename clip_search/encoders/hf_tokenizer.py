"""The tokenizer of a Hugging Face CLIP folder, run the way ``transformers.CLIPTokenizer`` runs it.

Why not open_clip's ``SimpleTokenizer``: it cleans text with ftfy and unescapes HTML, so curly
quotes, ligatures, full-width letters and entities (``it’s``, ``ﬁ``, ``&amp;``) become other
tokens than transformers gives them. CLIPTokenizer (the ``tokenizers``-backed class every current
transformers loads, and what ``AutoTokenizer`` gave before) only normalises to NFC, collapses
whitespace and lower-cases character by character. A checkpoint fine-tuned through transformers
learned those ids, so they are reproduced here, over the folder's own vocabulary and merges,
without importing transformers or tokenizers.

Ids, truncation (start token, the first ``context_length - 2`` tokens, end token) and the
special tokens typed in a text are CLIPTokenizer's; padding is open_clip's (zeros after the end
token), which the causal text tower never looks at and ``TextEncoder`` reads to spot cut queries.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import regex
import torch

# CLIPTokenizer's pre-tokenizer: CLIP's split (matches kept, the rest dropped), then the
# byte-level pre-tokenizer's own GPT-2 split of each piece.
_CLIP_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
_BYTE_LEVEL_SPLIT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_WHITESPACE = regex.compile(r"\s+")
END_OF_WORD = "</w>"


class TokenizerFilesError(ValueError):
    """The folder's tokenizer files are missing or unreadable (the loader says which)."""


class ClipBpeTokenizer:
    """Texts → (N, context_length) token ids, like open_clip's tokenizers are called."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], *, context_length: int,
                 bos_token: str = "<|startoftext|>", eos_token: str = "<|endoftext|>") -> None:
        missing = [token for token in (bos_token, eos_token) if token not in vocab]
        if missing:
            raise TokenizerFilesError(f"the vocabulary has no {missing[0]!r} token")
        self.context_length = context_length
        self.sot_token_id, self.eot_token_id = vocab[bos_token], vocab[eos_token]
        self._vocab = vocab
        self._ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self._specials = {bos_token: self.sot_token_id, eos_token: self.eot_token_id}
        self._special_split = regex.compile(
            "(" + "|".join(regex.escape(token) for token in self._specials) + ")")
        self._byte_encoder = _bytes_to_unicode()
        # Bounded: a web process tokenizes whatever shoppers type.
        self._word_ids = functools.lru_cache(maxsize=65536)(self._bpe_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start/end tokens, untruncated."""
        ids: list[int] = []
        for part in self._special_split.split(text):
            if part in self._specials:
                ids.append(self._specials[part])
                continue
            normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", part))
            normalized = "".join(char.lower() for char in normalized)  # per character, as tokenizers
            for piece in _CLIP_SPLIT.findall(normalized):
                for word in _BYTE_LEVEL_SPLIT.findall(piece):
                    ids.extend(self._word_ids("".join(self._byte_encoder[b] for b in word.encode())))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        result = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)[:length - 2], self.eot_token_id]
            result[row, :len(ids)] = torch.tensor(ids)
        return result

    def _bpe_ids(self, word: str) -> tuple[int, ...]:
        """CLIP's BPE: merge the lowest-ranked adjacent pair, all its occurrences, until none is
        known (the order ``tokenizers`` merges in too, for merges learned in rank order)."""
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            rank, first, second = min((self._ranks.get(pair, len(self._ranks)), *pair)
                                      for pair in zip(symbols, symbols[1:], strict=False))
            if rank == len(self._ranks):
                break
            merged, index = [], 0
            while index < len(symbols):
                if index + 1 < len(symbols) and symbols[index] == first and symbols[index + 1] == second:
                    merged.append(first + second)
                    index += 2
                else:
                    merged.append(symbols[index])
                    index += 1
            symbols = merged
        unknown = self.eot_token_id  # CLIPTokenizer's unk token is its end token
        return tuple(self._vocab.get(symbol, unknown) for symbol in symbols)


def _bytes_to_unicode() -> dict[int, str]:
    from open_clip.tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def load_tokenizer(folder: Path, context_length: int) -> ClipBpeTokenizer:
    """The folder's tokenizer: ``vocab.json`` + ``merges.txt`` (what the Hub's CLIP folders and
    transformers 4 write), else the BPE model inside ``tokenizer.json`` (all transformers 5
    writes); the start/end tokens ``tokenizer_config.json`` names."""
    vocab, merges = _read_vocabulary(folder)
    special = _special_tokens(folder)
    return ClipBpeTokenizer(vocab, merges, context_length=context_length, **special)


def tokenizer_files(folder: Path) -> list[Path]:
    """The files the vocabulary is read from; raises if the folder has neither layout."""
    pair = [folder / "vocab.json", folder / "merges.txt"]
    if all(path.is_file() for path in pair):
        return pair
    if (folder / "tokenizer.json").is_file():
        return [folder / "tokenizer.json"]
    raise TokenizerFilesError(
        "no tokenizer files (vocab.json + merges.txt, or tokenizer.json): save the checkpoint's "
        "CLIPProcessor or CLIPTokenizer into the folder too")


def _read_vocabulary(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    files = tokenizer_files(folder)
    try:
        if len(files) == 2:
            vocab = json.loads(files[0].read_text(encoding="utf-8"))
            lines = files[1].read_text(encoding="utf-8").splitlines()
            merges = [line.split() for line in lines if line.strip() and not line.startswith("#version")]
        else:
            model = json.loads(files[0].read_text(encoding="utf-8"))["model"]
            vocab = model["vocab"]
            merges = [merge.split() if isinstance(merge, str) else merge for merge in model["merges"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TokenizerFilesError(f"{', '.join(p.name for p in files)} cannot be read ({error})") from error
    bad = next((merge for merge in merges if len(merge) != 2), None)
    if not isinstance(vocab, dict) or bad is not None:
        raise TokenizerFilesError(f"{', '.join(p.name for p in files)}: not a BPE vocabulary and merges")
    return vocab, [(first, second) for first, second in merges]


def _special_tokens(folder: Path) -> dict[str, str]:
    """``bos_token`` / ``eos_token`` from tokenizer_config.json or special_tokens_map.json
    (a string, or an AddedToken dict with ``content``); CLIPTokenizer's defaults otherwise."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise TokenizerFilesError(f"{name} cannot be read ({error})") from error
        for key in ("bos_token", "eos_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                found[key] = value
    return found
