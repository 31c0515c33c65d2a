"""Checks run on a pipeline folder before anything in it is loaded.

A pipeline folder may come from a stranger. Loading it must never unpickle, import or execute
anything from it: weights are read only from safetensors files, components only from an allow-list
of classes, and the folder must be self-contained (no symlinks pointing outside it).
"""

from __future__ import annotations

import json
import math
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
CODE_SUFFIXES = {".py", ".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib"}
REMOTE_CODE_KEYS = {"auto_map", "custom_pipeline", "trust_remote_code"}
# transformers fetches and runs a kernel from the Hub when an attention implementation names a repository.
KERNEL_KEYS = {"attn_implementation", "_attn_implementation", "experts_implementation"}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# The weights file each library's loader looks for (``<stem>.safetensors``, a variant or shards of it).
WEIGHTS_STEMS = {"prodimg": "diffusion_pytorch_model", "transformers": "model"}
SAFETENSORS_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
# Floating-point parameters may be stored in any of these (the loader casts them, as fp16 variants need);
# integer, boolean or float8 tensors in place of a floating-point parameter are refused.
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
# Sizes a component config may declare; checked before anything is built from it.
MAX_CONFIG_INT = 2**20
MAX_CONFIG_LIST = 64
MAX_CONFIG_LAYERS = 256  # any "*layers*" key: each layer is a module, even on the meta device
MAX_SAMPLE_SIZE = 4096


class UnsafePipelineError(ValueError):
    """The folder holds something that prodimg refuses to load."""


def check_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse a safetensors header without loading tensors; raise on anything malformed.

    Returns ``{tensor name: (dtype, shape)}``.
    """
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
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise UnsafePipelineError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise UnsafePipelineError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_len = size - 8 - n
    tensors, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise UnsafePipelineError(f"{path}: corrupt safetensors header (bad __metadata__)")
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise UnsafePipelineError(f"{path}: tensor {name!r} points outside the file (truncated or corrupt)")
        dtype, shape = info.get("dtype"), info.get("shape")
        if dtype not in SAFETENSORS_DTYPE_SIZES:
            raise UnsafePipelineError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise UnsafePipelineError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if math.prod(shape) * SAFETENSORS_DTYPE_SIZES[dtype] != offsets[1] - offsets[0]:
            raise UnsafePipelineError(
                f"{path}: tensor {name!r} ({dtype}, shape {shape}) does not fit its "
                f"{offsets[1] - offsets[0]} bytes"
            )
        tensors[name] = (dtype, tuple(shape))
        spans.append(offsets)
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise UnsafePipelineError(f"{path}: corrupt safetensors header (tensors overlap or leave gaps)")
        end = stop
    if end != data_len:
        raise UnsafePipelineError(f"{path}: corrupt safetensors header ({data_len - end} trailing bytes)")
    return tensors


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise UnsafePipelineError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise UnsafePipelineError(f"{path}: expected a JSON object")
    return data


def _has_pickle_or_zip_magic(path: Path) -> bool:
    """A pickle (protocol 2+) or a zip archive, such as ``torch.save`` writes, whatever the file is called."""
    with open(path, "rb") as f:
        head = f.read(4)
    is_pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    return is_pickle or head == b"PK\x03\x04"


def check_config_values(path: Path, config: dict) -> None:
    """Refuse sizes no real model has (they would allocate or build without bound) and non-finite numbers."""

    def visit(key: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}.{k}" if key else str(k), v)
        elif isinstance(value, list):
            if len(value) > MAX_CONFIG_LIST:
                raise UnsafePipelineError(f"{path}: {key!r} has {len(value)} entries (max {MAX_CONFIG_LIST})")
            for v in value:
                visit(key, v)
        elif isinstance(value, float) and not math.isfinite(value):
            raise UnsafePipelineError(f"{path}: {key!r} is {value}; config numbers must be finite")
        elif isinstance(value, int) and not isinstance(value, bool):
            name = key.rsplit(".", 1)[-1]
            limit = MAX_CONFIG_INT
            if "layers" in name:
                limit = MAX_CONFIG_LAYERS
            elif name == "sample_size":
                limit = MAX_SAMPLE_SIZE
            if abs(value) > limit:
                raise UnsafePipelineError(f"{path}: {key!r} is {value}, above the limit of {limit}")

    visit("", config)


def _expected_tensors(folder: Path, library: str, class_name: str) -> dict[str, tuple[tuple, bool, bool]]:
    """``{name: (shape, is floating point, required)}`` for the model the component's config describes:
    its state dict (required) and its non-persistent buffers (older checkpoints store e.g. CLIP's
    ``position_ids``; the loaders ignore them).

    The model is built on the meta device, so a config declaring absurd sizes allocates nothing.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is incomplete: config.json is missing")
    check_config_values(config_path, _load_json(config_path))
    try:
        with torch.device("meta"):
            if library.startswith("prodimg"):
                from . import models

                cls = getattr(models, class_name)
                model = cls.from_config(cls.load_config(folder))
            else:
                import transformers

                cls = getattr(transformers, class_name)
                model = cls(cls.config_class.from_pretrained(folder))
    except Exception as err:  # noqa: BLE001 - any failure to build from the config means it is invalid
        raise UnsafePipelineError(f"{config_path}: not a valid {class_name} config ({err})") from None
    state = model.state_dict()
    expected = {k: (tuple(v.shape), v.is_floating_point(), False) for k, v in model.named_buffers()}
    return expected | {k: (tuple(v.shape), v.is_floating_point(), True) for k, v in state.items()}


def check_component_weights(folder: Path, library: str, class_name: str, weights: list[Path]) -> None:
    """Check that the safetensors ``weights`` hold exactly the tensors (names, shapes, floating dtypes)
    that the component's config describes, before the loader reads them."""
    expected = _expected_tensors(folder, library, class_name)
    present: set[str] = set()
    for path in weights:
        for name, (dtype, shape) in check_safetensors_header(path).items():
            if name not in expected:
                raise UnsafePipelineError(f"{path}: unexpected tensor {name!r} (not part of {class_name})")
            want_shape, floating, _ = expected[name]
            if shape != want_shape:
                raise UnsafePipelineError(
                    f"{path}: tensor {name!r} has shape {list(shape)}, its config requires {list(want_shape)}"
                )
            if floating and dtype not in FLOAT_DTYPES:
                raise UnsafePipelineError(
                    f"{path}: tensor {name!r} is {dtype}; floating-point weights must be "
                    f"one of {sorted(FLOAT_DTYPES)}"
                )
            present.add(name)
    missing = sorted(k for k, (_, _, required) in expected.items() if required and k not in present)
    if missing:
        raise UnsafePipelineError(
            f"{folder}: the weights lack {len(missing)} tensors of {class_name}, e.g. {missing[:3]}"
        )


def _check_tokenizer_files(folder: Path) -> None:
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        import tokenizers

        try:
            tokenizers.Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:  # noqa: BLE001 - the Rust parser raises a bare Exception
            raise UnsafePipelineError(f"{tokenizer_json}: not a valid tokenizer file ({err})") from None
    elif not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        raise FileNotFoundError(f"{folder} is incomplete: neither tokenizer.json nor vocab.json + merges.txt")


def check_pipeline_folder(path: str | os.PathLike, pipeline_class_name: str = "ProductImagePipeline") -> dict:
    """Validate a saved pipeline folder; return its parsed ``model_index.json``.

    Raises ``FileNotFoundError`` when the folder or a required file is missing and
    ``UnsafePipelineError`` (a ``ValueError``) for anything that must not be loaded: pickle, zip or code
    files, special files, escaping or broken symlinks, foreign classes, remote-code markers, malformed
    safetensors, weights that do not match their config (missing, unexpected, wrong shape, non-float
    dtype), absurd config sizes and invalid tokenizer files. Every message names the offending file.
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
                try:
                    target = p.resolve(strict=True)
                except (OSError, RuntimeError):
                    raise UnsafePipelineError(f"{p}: broken or looping symlink") from None
                if real_root != target and real_root not in target.parents:
                    raise UnsafePipelineError(f"{p}: symlink points outside the pipeline folder (to {target})")
            if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file():
                raise UnsafePipelineError(
                    f"{p}: pickle-based weight files are refused (they can run code when loaded); "
                    "re-save the pipeline with safetensors"
                )
            if p.suffix.lower() in CODE_SUFFIXES:
                raise UnsafePipelineError(f"{p}: code files are refused (prodimg never imports model code)")
            if name in filenames:
                if not p.is_file():
                    raise UnsafePipelineError(f"{p}: not a regular file (a device, FIFO or socket)")
                if p.suffix.lower() != ".safetensors" and _has_pickle_or_zip_magic(p):
                    raise UnsafePipelineError(
                        f"{p}: a pickle or zip archive (e.g. a torch.save file) under another name is "
                        "refused (it can run code when loaded)"
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
    extra = set(index) - set(ALLOWED_COMPONENTS) - {"_class_name", "_diffusers_version", "_name_or_path"}
    if extra:
        raise UnsafePipelineError(f"{index_path}: unexpected entries {sorted(extra)}")
    # The cheap checks above come first; now each component's folder.
    for component in ALLOWED_COMPONENTS:
        entry = index[component]
        sub = root / component
        if not sub.is_dir():
            raise FileNotFoundError(f"{root} is incomplete: the {component!r} folder is missing")
        for cfg in sub.glob("*.json"):
            data = _load_json(cfg)
            found = REMOTE_CODE_KEYS & set(data)
            if found:
                raise UnsafePipelineError(f"{cfg}: remote-code keys {sorted(found)} are not supported")
            kernels = sorted(k for k in KERNEL_KEYS & set(data) if "/" in json.dumps(data[k]))
            if kernels:
                raise UnsafePipelineError(f"{cfg}: {kernels} name a Hub kernel repository (remote code)")
        if component == "tokenizer":
            _check_tokenizer_files(sub)
        elif component == "scheduler":
            cfg = sub / "scheduler_config.json"
            if not cfg.is_file():
                raise FileNotFoundError(f"{root} is incomplete: {cfg} is missing")
            check_config_values(cfg, _load_json(cfg))
        else:
            weights = sorted(sub.glob("*.safetensors"))
            stem = WEIGHTS_STEMS[entry[0].split(".")[0]]
            if not any(w.name.startswith((f"{stem}.", f"{stem}-")) for w in weights):
                raise FileNotFoundError(
                    f"{root} is incomplete: no .safetensors weights ({stem}.safetensors) in {sub}"
                )
            check_component_weights(sub, entry[0], entry[1], weights)
    return index


def check_finite_parameters(module: torch.nn.Module, name: str) -> None:
    """Raise if any parameter or buffer of ``module`` holds NaN or Inf."""
    for pname, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{name}.{pname} has {bad} non-finite values; refusing to save or load it")


