"""The torch-free tokenizer (what the served models and the client use) gives open_clip's ids, and the served
modules import neither torch nor open_clip."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import open_clip
import pytest

from sigrl.bpe import CONTEXT_LENGTH, EOT_TOKEN_ID, SOT_TOKEN_ID, VOCAB_SIZE, ClipBPE, clean, trim


def broad_set() -> list[str]:
    """Prompts and names a server meets: plain and punctuated English, contractions, digits, accents and
    combining marks, CJK, Korean, Arabic, emoji with modifiers and joiners, HTML entities, mojibake, odd
    whitespace, special tokens written out, very long names, and random strings over a mixed alphabet."""
    texts = [
        "There is a dog in the scene.", "red circle", "blue-green  square!", "don't won't it's I'M y'all",
        "Café naïve résumé Ångström", "e\u0301cole (combining accent)", "北京 東京 上海", "서울 부산", "مرحبا بالعالم",
        "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷", "fish &amp; chips &lt;b&gt; &amp;amp;", "mojibake Ã©tÃ©",
        "  multiple   spaces\tand\nnew lines ", "<start_of_text> inside", "x <end_of_text> y", "İstanbul ß ﬁ Ⅻ ½",
        "123 4.5e6 3,141 0x1F", "\u200b zero width \ufeff bom", "ǅ titlecase Σίσυφος", "a" * 300, "word " * 80,
        "UPPER lower MiXeD", "tab\there", "semi;colon:colon/slash\\back", "ℌ𝔢𝔩𝔩𝔬 mathematical", "\u00a0nbsp\u00a0",
    ]
    rng = random.Random(0)
    alphabet = "abcdefghij klmn'-.,!?éüß中文😀0123456789&;<>_ \u0301\u200d"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(400)]
    return texts


def test_token_ids_equal_open_clips_on_a_broad_set():
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)
    texts = broad_set()
    ours = ClipBPE()(texts)
    expected = reference(texts).numpy()
    mismatched = [text for text, a, b in zip(texts, ours, expected) if not np.array_equal(a, b)]
    assert mismatched == [] and ours.shape == (len(texts), CONTEXT_LENGTH) and ours.dtype == np.int64
    assert ours[texts.index("word " * 80)][-1] == EOT_TOKEN_ID  # cut to the context, ending with the end token


def test_vocabulary_constants_and_helpers():
    bpe = ClipBPE()
    assert (bpe.sot_token_id, bpe.eot_token_id, bpe.vocab_size) == (SOT_TOKEN_ID, EOT_TOKEN_ID, VOCAB_SIZE)
    assert clean("  Fish &amp;amp;  Chips\n") == "fish & chips"
    ids = bpe(["dog", "a much longer prompt here"])
    assert trim(ids).shape == (2, int(ids.argmax(axis=1).max()) + 1)
    with pytest.raises(ValueError, match="token ids must be C×L"):
        trim(np.zeros((0, 5), np.int64))


def test_a_foreign_vocabulary_file_is_refused(tmp_path):
    import gzip

    path = tmp_path / "vocab.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("#version\na b\n")
    with pytest.raises(ValueError, match="is not CLIP's vocabulary"):
        ClipBPE(path)


def test_served_modules_import_neither_torch_nor_open_clip():
    """What the python stubs and the client import: no torch (1 GB and seconds per stub), no open_clip; nor do
    the engine-metadata reader, the Triton release table and the container build's helper."""
    modules = ["sigrl.serving.backend", "sigrl.serving.client", "sigrl.serving.entry", "sigrl.serving.images",
               "sigrl.serving.vocabulary", "sigrl.serving.protocol", "sigrl.bpe", "sigrl.preprocess",
               "sigrl.deploy.metadata", "sigrl.deploy.triton_releases", "sigrl.serving.container"]
    code = (f"import sys\nfor name in {modules!r}: __import__(name)\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'torchvision', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
