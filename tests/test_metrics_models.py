"""Metrics that run real networks: the pinned InceptionV3 file and a tiny random CLIPModel (CPU, offline)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from prodimg.metrics import EvalContext, get_metric
from prodimg.metrics.inception import (
    INCEPTION_INSTALL_COMMAND,
    INCEPTION_SHA1,
    InceptionFeatureExtractor,
    InceptionWeightsError,
    find_inception_weights,
    load_inception,
    resize_bilinear_tf,
    sha1_of_file,
)


@pytest.fixture(scope="module")
def inception_path():
    try:
        return find_inception_weights()
    except FileNotFoundError:
        pytest.skip(f"Inception weights not installed ({INCEPTION_INSTALL_COMMAND})")


def test_inception_file_is_pinned(inception_path):
    assert sha1_of_file(inception_path) == INCEPTION_SHA1


def test_corrupted_inception_file_refused(inception_path, tmp_path):
    broken = tmp_path / "default_1.pt"
    shutil.copyfile(inception_path, broken)
    with open(broken, "r+b") as f:
        f.seek(broken.stat().st_size // 2)
        chunk = f.read(16)
        f.seek(-16, 1)
        f.write(bytes(b ^ 0xFF for b in chunk))
    with pytest.raises(InceptionWeightsError, match=f"SHA-1 is [0-9a-f]{{40}}, expected {INCEPTION_SHA1}"):
        load_inception(broken)


def test_wrong_inception_file_refused(tmp_path):
    # A valid TorchScript file that is not the FID network.
    wrong = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2048)), str(wrong))
    with pytest.raises(InceptionWeightsError, match="corrupted or not the FID InceptionV3"):
        load_inception(wrong)
    # Not TorchScript at all, hash check skipped on purpose: still a clear error.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InceptionWeightsError, match="as a TorchScript module"):
        load_inception(junk, verify=False)
    with pytest.raises(FileNotFoundError, match="`path`"):
        load_inception(tmp_path / "missing.pt")


def test_resize_matches_tf1_bilinear():
    # TF1 resize_bilinear (align_corners=False, no half-pixel centres): out[j] = in at j * in / out.
    x = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    y = resize_bilinear_tf(x, (2, 8))
    assert torch.allclose(y[0, 0, 0], torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3]))


def test_inception_features_on_32px_images(inception_path):
    extractor = InceptionFeatureExtractor(inception_path, batch_size=2)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    pre = extractor.preprocess(images)
    assert pre.shape == (2, 3, 299, 299)
    assert pre.min() >= -1.0 and pre.max() <= 127 / 128
    feats = extractor(images)  # one batch of 2
    assert feats.shape == (2, 2048) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and (feats >= 0).all() and feats.std() > 0
    single = extractor(images[1:2])
    np.testing.assert_allclose(single[0], feats[1], rtol=1e-4, atol=1e-4)


# ---- CLIP score --------------------------------------------------------------------------------


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[])
    bos, eos = len(vocab) - 2, len(vocab) - 1
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval(), tokenizer


def test_clip_score_tiny_model():
    model, tokenizer = tiny_clip()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 48, 40, 3), dtype=np.uint8)  # non-square: resized + centre-cropped
    prompts = ["red dress", "blue striped shirt", "a bag", "black ankle boot", "white sneaker"]
    ctx = EvalContext(
        generated_images=images, prompts=prompts, clip_model=model, clip_tokenizer=tokenizer, batch_size=2
    )
    result = get_metric("clip_score").compute(ctx)
    assert set(result) == {"clip_score"} and isinstance(result["clip_score"], float)
    assert 0.0 <= result["clip_score"] <= 100.0
    # Batching does not change the score.
    ctx.batch_size = 5
    assert get_metric("clip_score").compute(ctx)["clip_score"] == pytest.approx(
        result["clip_score"], abs=1e-4
    )
