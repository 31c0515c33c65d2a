"""Hostile and broken pipeline folders (issue #9, part 2): model files cannot run code.

Every folder of the corpus built by ``prodimg.reliability.hostile_files`` is refused by
``ProductImagePipeline.from_pretrained`` with the documented error type and a message naming the
offending file or key; its canary is never written, nothing is imported or unpickled from it, and
all but the non-finite-weight cases are stopped by the folder check before any loader runs.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from prodimg import ProductImagePipeline
from prodimg.reliability import hostile_files
from prodimg.reliability.hostile_files import (
    CASE_NAMES,
    HostileCase,
    HostileFileBreach,
    build_hostile_corpus,
    check_hostile_case,
    python_payload,
    write_pickle_payload,
    write_torch_zip_payload,
)
from prodimg.safety import UnsafePipelineError
from prodimg.testing import make_tiny_pipeline

# Families the issue asks for; each must appear in some case name.
COVERED_KINDS = ("pickle", "torch_zip", "header", "symlink", "auto_map", "foreign", "nan", "huge", "missing")


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "pipe"
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_digest(base_dir) -> dict[str, str]:
    return _digest(base_dir)


@pytest.fixture(scope="module")
def corpus(base_dir, base_digest, tmp_path_factory) -> dict[str, HostileCase]:
    cases = build_hostile_corpus(tmp_path_factory.mktemp("hostile"), base_dir)
    return {case.name: case for case in cases}


def test_corpus_size_and_coverage(corpus):
    assert len(corpus) >= 24
    assert set(corpus) <= set(CASE_NAMES)
    kinds = collections.Counter(case.expected_error for case in corpus.values())
    assert kinds[UnsafePipelineError] >= 20 and kinds[ValueError] >= 2 and kinds[FileNotFoundError] >= 3
    for kind in COVERED_KINDS:
        assert any(kind in name for name in corpus), kind
    for case in corpus.values():
        assert case.path.is_dir() and not case.canary.exists()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_folder_is_refused(corpus, name):
    if name not in corpus:
        pytest.skip("this platform cannot build the case (no os.mkfifo)")
    case = corpus[name]
    refused, error = check_hostile_case(case)  # raises HostileFileBreach if anything ran or was imported
    assert refused, (
        f"{name} ({case.attack}): expected {case.expected_error.__name__} naming {case.names!r}, got {error}"
    )
    assert not case.canary.exists()


def test_base_pipeline_loads_and_is_untouched(corpus, base_dir, base_digest):
    """The control: the unmodified folder passes the same harness, and building the corpus (which
    hard-links the base files) changed none of them."""
    assert _digest(base_dir) == base_digest
    control = HostileCase(
        "control", base_dir, "none", ValueError, "", base_dir.parent / "control.canary", False
    )
    assert check_hostile_case(control) == (False, "loaded without an error")
    pipe = ProductImagePipeline.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("red dress", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()


def test_payloads_are_live(tmp_path):
    """The payloads really run when unpickled or imported, so a loader that did so would be caught."""
    for writer, load in [
        (write_pickle_payload, lambda p: pickle.loads(p.read_bytes())),
        (write_torch_zip_payload, lambda p: torch.load(p, weights_only=False)),
    ]:
        canary = tmp_path / f"{writer.__name__}.canary"
        writer(tmp_path / f"{writer.__name__}.bin", canary)
        load(tmp_path / f"{writer.__name__}.bin")
        assert canary.exists()
    canary = tmp_path / "py.canary"
    (tmp_path / "evil.py").write_text(python_payload(canary))
    spec = importlib.util.spec_from_file_location("evil_payload_probe", tmp_path / "evil.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert canary.exists()


def test_harness_detects_a_loader_that_runs_the_payload(corpus, monkeypatch):
    """If from_pretrained unpickled or imported from the folder, check_hostile_case would raise a breach."""
    case = corpus["pickle_ckpt"]

    def unpickling_loader(path, **kwargs):
        with open(Path(path) / "generator" / "model.ckpt", "rb") as f:
            pickle.load(f)
        raise ValueError("refused, but too late")

    monkeypatch.setattr(ProductImagePipeline, "from_pretrained", unpickling_loader)
    with pytest.raises(HostileFileBreach, match="canary.*written.*unpickling was attempted"):
        check_hostile_case(case)
    case.canary.unlink()

    case = corpus["custom_pipeline_with_py_file"]

    def importing_loader(path, **kwargs):
        spec = importlib.util.spec_from_file_location("pipeline_from_folder", Path(path) / "pipeline.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        raise ValueError("refused, but too late")

    monkeypatch.setattr(ProductImagePipeline, "from_pretrained", importing_loader)
    try:
        with pytest.raises(HostileFileBreach, match="imported from the folder.*pipeline_from_folder"):
            check_hostile_case(case)
    finally:
        sys.modules.pop("pipeline_from_folder", None)
        case.canary.unlink(missing_ok=True)


def test_harness_detects_a_case_that_reaches_the_loaders(corpus, monkeypatch):
    case = corpus["missing_tensor_text_encoder"]  # the loaders would silently re-initialise the tensor
    monkeypatch.setattr("prodimg.pipeline.check_pipeline_folder", lambda *a, **k: None)
    with pytest.raises(HostileFileBreach, match="through to the component loaders"):
        check_hostile_case(case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_floating_storage_dtypes_are_accepted(base_dir, tmp_path, dtype):
    """Policy: floating-point weights stored as F16/BF16/F64 load (cast to the model's dtype); only
    integer, boolean and float8 storage is refused (see the corpus)."""
    folder = tmp_path / "pipe"
    shutil.copytree(base_dir, folder)
    weights = folder / hostile_files.GENERATOR_WEIGHTS
    tensors = {k: v.to(dtype) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    pipe = ProductImagePipeline.from_pretrained(folder)
    assert pipe.generator.dtype == torch.float32
    expected = tensors["conv_out.weight"].float()
    torch.testing.assert_close(pipe.generator.conv_out.weight.detach(), expected)


def test_symlinks_inside_the_folder_are_accepted(base_dir, tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(base_dir, folder)
    (folder / "blobs").mkdir()
    weights = folder / hostile_files.GENERATOR_WEIGHTS
    shutil.move(weights, folder / "blobs" / "generator.safetensors")
    os.symlink(Path("..") / "blobs" / "generator.safetensors", weights)
    ProductImagePipeline.from_pretrained(folder)


def test_legacy_position_ids_buffer_is_accepted(base_dir, tmp_path):
    """Older CLIP checkpoints store the (now non-persistent) ``position_ids`` buffer; the loaders ignore
    it, so it is not an "unexpected tensor". A wrongly shaped one still is refused."""
    folder = tmp_path / "pipe"
    shutil.copytree(base_dir, folder)
    weights = folder / hostile_files.TEXT_ENCODER_WEIGHTS
    tensors = load_file(weights)
    save_file({**tensors, "text_model.embeddings.position_ids": torch.arange(77)[None]}, weights)
    ProductImagePipeline.from_pretrained(folder)
    save_file({**tensors, "text_model.embeddings.position_ids": torch.arange(78)[None]}, weights)
    with pytest.raises(UnsafePipelineError, match="'text_model.embeddings.position_ids' has shape"):
        ProductImagePipeline.from_pretrained(folder)
