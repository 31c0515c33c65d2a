"""The prompt-embedding cache returns exactly what the frozen text encoder returns, encoding once."""

import logging

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from prodimg.data.embedding_cache import PromptEmbeddingCache, text_encoder_fingerprint, tokenizer_fingerprint
from prodimg.text import load_clip_tokenizer

CAPTIONS = [
    "a red tee",
    "blue striped handbag on white background",
    "a red tee",
    "grey chinos",
    "tee | pink | plaid",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def tiny_encoder(cls=CLIPTextModel, seed=0, hidden=32):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return cls(config).eval()


def reference(encoder, tokenizer, captions):
    tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return out.last_hidden_state, tokens.attention_mask, pooled


@pytest.mark.parametrize("cls,pooled_dim", [(CLIPTextModel, 32), (CLIPTextModelWithProjection, 16)])
def test_exactly_what_the_encoder_returns(tokenizer, cls, pooled_dim):
    encoder = tiny_encoder(cls)
    cache = PromptEmbeddingCache(encoder, tokenizer)
    unique = list(dict.fromkeys(CAPTIONS))
    out = cache.encode(unique)  # encoded as one batch, like the reference
    hidden, mask, pooled = reference(encoder, tokenizer, unique)
    assert out.prompt_embeds.shape == (4, 77, 32) and out.attention_mask.shape == (4, 77)
    assert out.pooled_prompt_embeds.shape == (4, pooled_dim)
    assert torch.equal(out.prompt_embeds, hidden)
    assert torch.equal(out.attention_mask, mask)
    assert torch.equal(out.pooled_prompt_embeds, pooled)
    # any later batch (order, duplicates) serves those exact rows
    again = cache.encode(CAPTIONS[::-1])
    order = [unique.index(c) for c in CAPTIONS[::-1]]
    assert torch.equal(again.prompt_embeds, hidden[order])
    assert torch.equal(again.pooled_prompt_embeds, pooled[order])
    # and matches a fresh encoder run on that batch up to the encoder's own batch-size rounding
    h2, m2, p2 = reference(encoder, tokenizer, CAPTIONS[::-1])
    torch.testing.assert_close(again.prompt_embeds, h2, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.pooled_prompt_embeds, p2, rtol=0, atol=1e-6)
    assert torch.equal(again.attention_mask, m2)


def test_each_distinct_caption_encoded_once_in_batches(tokenizer):
    encoder = tiny_encoder()
    batch_sizes = []
    encoder.register_forward_hook(
        lambda m, args, kwargs, out: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    cache = PromptEmbeddingCache(encoder, tokenizer, batch_size=3)
    assert cache.precompute(CAPTIONS) == 4
    assert batch_sizes == [3, 1]
    cache.encode(CAPTIONS)
    cache.encode("a red tee")
    assert batch_sizes == [3, 1] and cache.num_encoded == 4 and len(cache) == 4
    cache.encode(["a red tee", "new caption"])
    assert batch_sizes == [3, 1, 1] and "new caption" in cache
    assert cache.cache_key("a red tee") == (cache.encoder_key, cache.tokenizer_key, "a red tee")


def test_save_load_roundtrip_and_key(tokenizer, tmp_path):
    encoder = tiny_encoder(CLIPTextModelWithProjection)
    cache = PromptEmbeddingCache(encoder, tokenizer, cache_dir=tmp_path)
    first = cache.encode(CAPTIONS)
    path = cache.save()
    assert path.name == f"prompt_embeds-{cache.key[:16]}.safetensors"
    reloaded = PromptEmbeddingCache(encoder, tokenizer, cache_dir=tmp_path)  # reads the file
    assert len(reloaded) == 4
    second = reloaded.encode(CAPTIONS)
    assert reloaded.num_encoded == 0
    for a, b in zip(vars(first).values(), vars(second).values()):
        assert torch.equal(a, b)
    other = PromptEmbeddingCache(
        tiny_encoder(CLIPTextModelWithProjection, seed=1), tokenizer, cache_dir=tmp_path
    )
    assert other.key != cache.key and len(other) == 0  # different weights -> different file
    with pytest.raises(ValueError, match="another text encoder"):
        other.load(path)


def test_packed_table_serves_the_same_rows(tokenizer, tmp_path):
    """After pack() a batch is one indexed read of the table: the same values as the per-row path,
    new captions still work (from their own rows), and the cache still saves and reloads."""
    encoder = tiny_encoder(CLIPTextModelWithProjection)
    cache = PromptEmbeddingCache(encoder, tokenizer, cache_dir=tmp_path)
    cache.precompute(CAPTIONS)
    before = cache.encode(CAPTIONS[::-1])
    table = cache.pack()
    assert table.prompt_embeds.shape == (4, 77, 32) and table.pooled_prompt_embeds.shape == (4, 16)
    after = cache.encode(CAPTIONS[::-1])
    for a, b in zip(vars(before).values(), vars(after).values()):
        assert torch.equal(a, b)
    # rows are views of the table: no second copy is kept
    row = cache._rows["grey chinos"][0]
    assert row.untyped_storage().data_ptr() == table.prompt_embeds.untyped_storage().data_ptr()
    assert cache.nbytes == sum(t.numel() * t.element_size() for t in vars(table).values())
    mixed = cache.encode(["grey chinos", "a caption added after pack"])
    assert cache.num_encoded == 5 and torch.equal(mixed.prompt_embeds[0], after.prompt_embeds[1])
    cache.save()
    reloaded = PromptEmbeddingCache(encoder, tokenizer, cache_dir=tmp_path)
    assert len(reloaded) == 5
    assert torch.equal(reloaded.encode(["grey chinos"]).prompt_embeds[0], after.prompt_embeds[1])
    with pytest.raises(ValueError, match="empty"):
        PromptEmbeddingCache(encoder, tokenizer).pack()


def test_identity_hashes(tokenizer):
    a, b = tiny_encoder(seed=0), tiny_encoder(seed=0)
    assert text_encoder_fingerprint(a) == text_encoder_fingerprint(b)
    with torch.no_grad():
        next(iter(b.parameters())).view(-1)[0] += 1e-3
    assert text_encoder_fingerprint(a) != text_encoder_fingerprint(b)
    assert text_encoder_fingerprint(tiny_encoder(CLIPTextModelWithProjection)) != text_encoder_fingerprint(a)
    t2 = load_clip_tokenizer()
    assert tokenizer_fingerprint(t2) == tokenizer_fingerprint(tokenizer)
    t2.model_max_length = 32
    assert tokenizer_fingerprint(t2) != tokenizer_fingerprint(tokenizer)


def test_tokenizer_fingerprint_ignores_call_state(tokenizer, tmp_path):
    """A tokenizer used with truncation/padding (and saved so: tokenizer.json keeps that state) still
    hits the cache written for the fresh one; a changed vocabulary does not."""
    key = tokenizer_fingerprint(tokenizer)
    used = load_clip_tokenizer()
    used(["a red tee"] * 2, padding="max_length", max_length=77, truncation=True)
    used.backend_tokenizer.enable_truncation(max_length=12)
    used.backend_tokenizer.enable_padding(length=12)
    assert tokenizer_fingerprint(used) == key
    used.save_pretrained(tmp_path)
    assert '"truncation": {' in (tmp_path / "tokenizer.json").read_text()
    reloaded = type(tokenizer).from_pretrained(tmp_path)
    assert tokenizer_fingerprint(reloaded) == key
    reloaded.add_tokens(["zzzproductword"])
    assert tokenizer_fingerprint(reloaded) != key


def test_truncation_is_logged_and_bad_input(tokenizer, caplog):
    cache = PromptEmbeddingCache(tiny_encoder(), tokenizer)
    long = " ".join(["red silk scarf"] * 40)
    with caplog.at_level(logging.WARNING, logger="prodimg.data.embedding_cache"):
        out = cache.encode([long])
    assert "truncated to 77 tokens" in caplog.text
    assert out.attention_mask.sum() == 77
    with pytest.raises(TypeError, match=r"captions\[1\]"):
        cache.encode(["ok", 3])
    with pytest.raises(ValueError, match="empty"):
        cache.encode([])
