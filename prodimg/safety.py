"""Checks run on a pipeline folder before anything in it is loaded.

A pipeline folder may come from a stranger. Loading it must never unpickle, import or execute
anything from it: weights are read only from safetensors files, components only from an allow-list
of classes, and the folder must be self-contained (no symlinks pointing outside it).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

# Every (library, class) a ProductImagePipeline folder may name in model_index.json.
ALLOWED_COMPONENTS: dict[str, set[tuple[str, str]]] = {
    "tokenizer": {("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")},
    "text_encoder": {("transformers", "CLIPTextModel"), ("transformers", "CLIPTextModelWithProjection")},
    "generator": {("prodimg", "ProductGenerator"), ("prodimg.models.generator", "ProductGenerator")},
    "scheduler": {("prodimg", "DDGANScheduler"), ("prodimg.schedulers.scheduling_ddgan", "DDGANScheduler")},
}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz", ".h5", ".msgpack"}
REMOTE_CODE_KEYS = {"auto_map", "custom_pipeline", "trust_remote_code"}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class UnsafePipelineError(ValueError):
    """The folder holds something that prodimg refuses to load."""


def check_safetensors_header(path: Path) -> None:
    """Parse a safetensors header without loading tensors; raise on anything malformed."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UnsafePipelineError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise UnsafePipelineError(f"{path}: corrupt safetensors header (declares {n} header bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UnsafePipelineError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise UnsafePipelineError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise UnsafePipelineError(f"{path}: tensor {name!r} points outside the file (truncated or corrupt)")


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsafePipelineError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise UnsafePipelineError(f"{path}: expected a JSON object")
    return data


def check_pipeline_folder(path: str | os.PathLike, pipeline_class_name: str = "ProductImagePipeline") -> dict:
    """Validate a saved pipeline folder; return its parsed ``model_index.json``.

    Raises ``FileNotFoundError`` when the folder or a required file is missing and
    ``UnsafePipelineError`` (a ``ValueError``) for anything that must not be loaded.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"pipeline folder {str(root)!r} does not exist")
    real_root = root.resolve()
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{root} is not a saved pipeline: model_index.json is missing")

    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = p.resolve()
                if real_root != target and real_root not in target.parents:
                    raise UnsafePipelineError(f"{p}: symlink points outside the pipeline folder (to {target})")
            if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file():
                raise UnsafePipelineError(
                    f"{p}: pickle-based weight files are refused (they can run code when loaded); "
                    "re-save the pipeline with safetensors"
                )

    index = _load_json(index_path)
    class_name = index.get("_class_name")
    if class_name != pipeline_class_name:
        raise UnsafePipelineError(f"{index_path}: _class_name is {class_name!r}, expected {pipeline_class_name!r}")
    found = REMOTE_CODE_KEYS & set(index)
    if found:
        raise UnsafePipelineError(f"{index_path}: remote-code keys {sorted(found)} are not supported")
    for component, allowed in ALLOWED_COMPONENTS.items():
        entry = index.get(component)
        if not (isinstance(entry, list) and len(entry) == 2 and tuple(entry) in allowed):
            raise UnsafePipelineError(
                f"{index_path}: component {component!r} is {entry!r}; expected one of {sorted(map(list, allowed))}"
            )
        sub = root / component
        if not sub.is_dir():
            raise FileNotFoundError(f"{root} is incomplete: the {component!r} folder is missing")
        for cfg in sub.glob("*.json"):
            found = REMOTE_CODE_KEYS & set(_load_json(cfg))
            if found:
                raise UnsafePipelineError(f"{cfg}: remote-code keys {sorted(found)} are not supported")
        if component in ("text_encoder", "generator"):
            weights = sorted(sub.glob("*.safetensors"))
            if not weights:
                raise FileNotFoundError(f"{root} is incomplete: no .safetensors weights in {sub}")
            for w in weights:
                check_safetensors_header(w)
    extra = set(index) - set(ALLOWED_COMPONENTS) - {"_class_name", "_diffusers_version", "_name_or_path"}
    if extra:
        raise UnsafePipelineError(f"{index_path}: unexpected entries {sorted(extra)}")
    return index


def check_finite_parameters(module: torch.nn.Module, name: str) -> None:
    """Raise if any parameter or buffer of ``module`` holds NaN or Inf."""
    for pname, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{name}.{pname} has {bad} non-finite values; refusing to save or load it")


