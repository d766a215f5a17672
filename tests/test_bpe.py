"""The torch-free CLIP BPE tokenizer gives open_clip's ids (the ONNX web path tokenizes with it)."""

import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import SimpleTokenizer

from clip_search.encoders.bpe import CLEAN_MODES, ClipBpeTokenizer

TEXTS = [
    "", " ", "a red mug", "  Red   COFFEE mug ", "RED-MUG-00042", "naïve café crème brûlée",
    "ÅNGSTRÖM ß ﬁ", "日本語のテキスト 東京", "emoji 😀👍🏽 test", "&amp;lt;b&amp;gt; html &quot;quoted&quot;",
    "don't they'll I'd", "x" * 500, " ".join(["word"] * 100), "<start_of_text>hi<end_of_text>",
    "<START_OF_TEXT>", "12345 3.14 $99.99", "tab\tnew\nline", "Ελληνικά кириллица عربى हिन्दी",
    "\u200b zero width\u00a0nbsp", "under_score-dash/slash", "mojibake: cafÃ©", "combining e\u0301",
    "100% cotton, 2×500 ml!!!", "'s 't 're", "ｆｕｌｌｗｉｄｔｈ",
]


@pytest.fixture(scope="module")
def tokenizers():
    return {(mode, length): (ClipBpeTokenizer(context_length=length, clean_mode=mode),
                             SimpleTokenizer(context_length=length, clean=mode))
            for mode in CLEAN_MODES for length in (77, 20)}


def assert_same(tokenizers, texts):
    for ours, theirs in tokenizers.values():
        expected = theirs(texts).numpy()
        got = ours(texts)
        assert got.dtype.name == "int64" and got.shape == expected.shape
        for text, row, want in zip(texts, got, expected, strict=True):
            assert row.tolist() == want.tolist(), (ours.clean_mode, ours.context_length, text)


def test_known_strings_give_open_clips_ids(tokenizers):
    assert_same(tokenizers, TEXTS)


def test_random_unicode_gives_open_clips_ids(tokenizers):
    rng = random.Random(7)
    ranges = [(32, 127), (0xA0, 0x250), (0x370, 0x460), (0x3040, 0x30FF), (0x4E00, 0x4E80),
              (0x1F600, 0x1F64F)]
    alphabet = [chr(c) for start, stop in ranges for c in range(start, stop)]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(300)]
    assert_same(tokenizers, texts)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_any_text_gives_open_clips_ids(tokenizers, text):
    assert_same(tokenizers, [text])


def test_it_imports_no_torch():
    code = ("import sys; from clip_search.encoders.bpe import ClipBpeTokenizer; ClipBpeTokenizer()('a mug'); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
