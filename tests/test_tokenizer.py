"""The bundled OpenAI CLIP tokenizer loads offline and matches open_clip's reference tokenizer.

The expected ids below were recorded from open_clip's own ``SimpleTokenizer`` (open_clip_torch
3.3.0). To redo the check (never install open_clip_torch: it pulls torchvision)::

    pip download --no-deps open_clip_torch==3.3.0 -d /tmp/oc
    cd /tmp/oc && unzip -o open_clip_torch-3.3.0-py3-none-any.whl \\
        open_clip/tokenizer.py open_clip/bpe_simple_vocab_16e6.txt.gz
    pip install --target /tmp/oc/deps ftfy     # tokenizer.py also needs regex, numpy, torch
    cd /path/to/repo && HF_HUB_OFFLINE=1 PYTHONPATH=.:/tmp/oc/deps python - <<'PY'
    import importlib.util
    spec = importlib.util.spec_from_file_location("oc_tok", "/tmp/oc/open_clip/tokenizer.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)   # no relative imports
    ref = m.SimpleTokenizer()
    from prodimg.text import load_clip_tokenizer
    tok = load_clip_tokenizer()
    for s in ["red silk scarf", "café rouge", ""]:   # ... every string in EXPECTED
        r = [ref.sot_token_id] + ref.encode(s) + [ref.eot_token_id]
        print(r == tok(s)["input_ids"], repr(s), r)
    long = " ".join(["red silk scarf"] * 30)
    print(m.tokenize([long])[0].tolist() == tok(long, truncation=True, max_length=77)["input_ids"])
    PY

Known divergence (not pinned here): open_clip runs ``ftfy.fix_text`` and ``html.unescape`` before
BPE, transformers' CLIPTokenizer only NFC + lowercase, so "rock &amp; roll" or ligatures like
"ﬁ" tokenize differently. open_clip's ``tokenize()`` pads with 0; transformers pads with
``<|endoftext|>`` (49407), as openai/clip-vit-* on the Hub does.
"""

import pytest

from prodimg.text import CLIP_TOKENIZER_DIR, load_clip_tokenizer

BOS, EOS = 49406, 49407

EXPECTED = {
    "red silk scarf": [49406, 736, 9743, 13365, 49407],
    "a photo of a blue t-shirt, on white background": [
        49406, 320, 1125, 539, 320, 1746, 339, 268, 2523, 267, 525, 1579, 5994, 49407,
    ],
    "Men's SNEAKERS!!": [49406, 1656, 568, 17397, 748, 49407],
    "striped dress 123": [49406, 22192, 2595, 272, 273, 274, 49407],
    "café rouge": [49406, 15304, 16209, 49407],
    "": [49406, 49407],
    "  Naïve   CRÈME brûlée — 50% off ": [
        49406, 1097, 35689, 563, 1075, 12138, 614, 711, 127, 119, 75, 13489, 2005, 276, 271, 260, 1007, 49407,
    ],
    "emoji 👗👠 dress": [49406, 16327, 964, 245, 41264, 2595, 49407],
    "don't stop": [49406, 847, 713, 1691, 49407],
    "日本語のドレス": [49406, 39121, 44353, 34002, 252, 21575, 2429, 231, 32965, 39220, 49407],
}


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


def test_files_present():
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (CLIP_TOKENIZER_DIR / name).is_file(), name


def test_sizes_and_special_tokens(tok):
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert (tok.bos_token, tok.bos_token_id) == ("<|startoftext|>", BOS)
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", EOS)
    assert tok.pad_token_id == EOS


@pytest.mark.parametrize("text", list(EXPECTED))
def test_ids_match_open_clip(tok, text):
    assert tok(text)["input_ids"] == EXPECTED[text]


def test_padding_to_77(tok):
    enc = tok("red silk scarf", padding="max_length", max_length=77)
    assert len(enc["input_ids"]) == 77
    assert enc["input_ids"][:5] == EXPECTED["red silk scarf"]
    assert enc["input_ids"][5:] == [EOS] * 72
    assert enc["attention_mask"] == [1] * 5 + [0] * 72


def test_truncation_to_77(tok):
    # Same result as open_clip.tokenize(): BOS, the first 75 tokens, EOS.
    text = " ".join(["red silk scarf"] * 30)  # 90 word tokens
    ids = tok(text, truncation=True, max_length=77)["input_ids"]
    assert len(ids) == 77
    assert ids == [BOS] + [736, 9743, 13365] * 25 + [EOS]
    batch = tok([text, "red silk scarf"], padding="max_length", truncation=True, return_tensors="pt")
    assert tuple(batch["input_ids"].shape) == (2, 77)
