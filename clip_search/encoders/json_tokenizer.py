"""open_clip's ``HFTokenizer`` without transformers: a folder's ``tokenizer.json``, run by ``tokenizers``.

SigLIP models (and other open_clip towers whose config names an ``hf_tokenizer_name``) tokenize
through transformers' ``AutoTokenizer`` in open_clip, which makes transformers a run-time
dependency only to read one JSON file. The ``tokenizers`` library (the ``siglip`` extra) runs that
file itself: the same normaliser, pre-tokenizer, model and post-processor (SigLIP's: ``$A </s>``),
then what ``HFTokenizer.__call__`` asks transformers for: open_clip's cleaning of the text
(``clean``, e.g. SigLIP's "canonicalize": lower case, punctuation dropped), truncation to
``context_length`` with the post-processor's tokens kept, padding to ``context_length`` with the
folder's pad token on its padding side, and ``strip_sep_token``. ``tests/test_siglip.py`` holds the
ids to open_clip's own tokenizer.

transformers 5 rebuilds a T5 tokenizer's pipeline from its class (pre-tokenizer
``WhitespaceSplit`` + ``Metaspace``) instead of the file's; after open_clip's cleaning (single
spaces, no leading or trailing ones) both give the same pieces.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

FILES = ("tokenizer.json", "tokenizer_config.json")
OPTIONAL_FILES = ("special_tokens_map.json",)


class TokenizerFilesError(ValueError):
    """The tokenizer files are missing or unreadable (the loader turns this into EncoderLoadError)."""


class JsonTokenizer:
    """Token ids as ``open_clip.tokenizer.HFTokenizer`` gives them, for a folder of tokenizer files.

    ``folder``: holds ``tokenizer.json`` and ``tokenizer_config.json`` (``special_tokens_map.json``
    is read too when present, as transformers does).
    """

    def __init__(self, folder: str | Path, *, context_length: int, clean: str = "whitespace",
                 strip_sep_token: bool = False) -> None:
        from open_clip.tokenizer import get_clean_fn
        from tokenizers import Tokenizer

        folder = Path(folder)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise TokenizerFilesError(f"no {missing[0]} in {str(folder)!r}.")
        try:
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            special = _special_tokens(folder)
        except Exception as error:  # OSError, JSON's ValueError, tokenizers' bare Exception
            raise TokenizerFilesError(f"unreadable tokenizer files in {str(folder)!r}: {error}") from error
        self.context_length = context_length
        self.clean_fn = get_clean_fn(clean)
        pad = special.get("pad_token")
        if pad is None or self._tokenizer.token_to_id(pad) is None:
            raise TokenizerFilesError(f"{str(folder)!r}: the tokenizer has no pad token to pad queries with.")
        self.pad_token_id = self._tokenizer.token_to_id(pad)
        sep = special.get("sep_token")
        self.sep_token_id = None if sep is None else self._tokenizer.token_to_id(sep)
        self.strip_sep_token = strip_sep_token
        self._tokenizer.enable_truncation(context_length, direction=special.get("truncation_side", "right"))
        self._tokenizer.enable_padding(direction=special.get("padding_side", "right"),
                                       pad_id=self.pad_token_id, pad_token=pad, length=context_length)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if context_length not in (None, self.context_length):
            raise ValueError(f"this tokenizer pads to {self.context_length} tokens, not {context_length}.")
        encodings = self._tokenizer.encode_batch([self.clean_fn(text) for text in texts])
        ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)
        if self.strip_sep_token and self.sep_token_id is not None:
            ids = torch.where(ids == self.sep_token_id, torch.zeros_like(ids), ids)
        return ids.reshape(len(texts), self.context_length)

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Which texts lose tokens to ``context_length`` (the last token alone cannot say: SigLIP
        pads with its end token, and keeps it at the end of a cut text)."""
        return [bool(encoding.overflowing) for encoding in
                self._tokenizer.encode_batch([self.clean_fn(text) for text in texts])]


_READ = ("pad_token", "sep_token", "padding_side", "truncation_side")


def _special_tokens(folder: Path) -> dict[str, str]:
    """Special tokens and sides from ``tokenizer_config.json``, over ``special_tokens_map.json``."""
    values: dict[str, str] = {}
    for name in (*OPTIONAL_FILES, "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        for key, value in json.loads(path.read_text(encoding="utf-8")).items():
            if isinstance(value, dict) and "content" in value:  # an AddedToken written out
                value = value["content"]
            if key in _READ and isinstance(value, str):
                values[key] = value
    return values
