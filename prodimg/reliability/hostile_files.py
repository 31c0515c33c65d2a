"""A corpus of hostile and broken pipeline folders, and the check that loading refuses each one safely.

:func:`build_hostile_corpus` copies a valid saved pipeline once per case and breaks the copy in one
way: pickles whose ``__reduce__`` payload would write a canary file (under weight names, inside a
``torch.save`` zip, renamed to ``.safetensors`` or to a tokenizer file), malformed safetensors,
weights that do not match their config, non-finite weights, foreign classes and remote-code markers,
code files, escaping or looping symlinks, special files, absurd config sizes and missing pieces.

:func:`check_hostile_case` loads a case with ``ProductImagePipeline.from_pretrained`` and reports
whether it was refused with the documented error; a breach (the canary was written, a module was
imported from the folder, something was unpickled, or a case that must be stopped by the folder
check reached the loader) raises :class:`HostileFileBreach` instead.

Dtype policy: floating-point weights may be stored as F16, BF16, F32 or F64 (the loader casts them,
as fp16 variants need); integer, boolean and float8 tensors in place of floating-point weights are
refused. Unpickling is never attempted, so protocol 0/1 pickles under names that no loader reads are
harmless and are not sniffed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..safety import UnsafePipelineError
from . import time_limit

GENERATOR_WEIGHTS = "generator/diffusion_pytorch_model.safetensors"
TEXT_ENCODER_WEIGHTS = "text_encoder/model.safetensors"
LOAD_TIME_LIMIT = 60  # seconds; a hang (e.g. opening a FIFO) counts as a breach
DYNAMIC_MODULE_PREFIXES = ("transformers_modules", "diffusers_modules")


class HostileFileBreach(AssertionError):
    """Loading a hostile folder ran, imported or unpickled something from it (or hung)."""


@dataclass(frozen=True)
class HostileCase:
    """One broken pipeline folder.

    Attributes:
        name: identifier, also the folder name.
        path: the folder to pass to ``from_pretrained``.
        attack: what the folder attacks or breaks.
        expected_error: the documented exception type loading must raise.
        names: the offending file (relative to ``path``) or key the error message must name.
        canary: a file outside ``path`` that the folder's payload would create if it ran.
        refused_before_loading: True when ``check_pipeline_folder`` must stop it before the loaders run.
    """

    name: str
    path: Path
    attack: str
    expected_error: type[Exception]
    names: str
    canary: Path
    refused_before_loading: bool = True


# ============================================================================================ payloads
class CanaryPayload:
    """Unpickling this object calls ``open(canary, "w")``: the file appears iff the pickle was loaded."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


def write_pickle_payload(path: Path, canary: Path) -> None:
    _unlink(path)
    with open(path, "wb") as f:
        pickle.dump({"weight": CanaryPayload(canary)}, f, protocol=4)


def write_torch_zip_payload(path: Path, canary: Path) -> None:
    """The payload in ``torch.save``'s zip format (``archive/data.pkl``)."""
    _unlink(path)
    torch.save({"weight": CanaryPayload(canary)}, path)


def python_payload(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').write('imported')\n"


# ============================================================================================ file edits
# Case folders share the base folder's files through hard links; every edit therefore replaces a file
# (unlink, then write) and never writes into an existing one.
def _unlink(path: Path) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()


def _write_bytes(path: Path, data: bytes) -> None:
    _unlink(path)
    path.write_bytes(data)


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    _write_bytes(path, json.dumps(data, indent=2).encode())


def _read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_safetensors(path: Path, header, data: bytes) -> None:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    _write_bytes(path, struct.pack("<Q", len(h)) + h + data)


def _edit_tensors(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path)
    edit(tensors)
    _unlink(path)
    save_file(tensors, path)


def _edit_header(path: Path, edit: Callable[[dict, bytes], bytes | None]) -> None:
    header, data = _read_safetensors(path)
    data = edit(header, data) or data
    _write_safetensors(path, header, data)


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _same_size_pair(header: dict) -> tuple[str, str]:
    by_size: dict[int, str] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end - begin in by_size:
            return by_size[end - begin], name
        by_size[end - begin] = name
    raise ValueError("no two tensors of the same size")


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ============================================================================================ the corpus
@dataclass(frozen=True)
class _Spec:
    name: str
    attack: str
    expected_error: type[Exception]
    names: str
    build: Callable[[Path, Path, Path], None]  # (case folder, canary, scratch folder outside the case)
    refused_before_loading: bool = True


def _replace_with_pickle(rel: str, new_rel: str | None = None, writer=write_pickle_payload):
    def build(d: Path, canary: Path, scratch: Path) -> None:
        if new_rel is not None:
            _unlink(d / rel)
        writer(d / (new_rel or rel), canary)

    return build


def _add_python(rel: str, index_edit: Callable[[dict], None] | None = None, config: str | None = None):
    def build(d: Path, canary: Path, scratch: Path) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(d / rel, python_payload(canary).encode())
        if index_edit is not None:
            _edit_json(d / (config or "model_index.json"), index_edit)

    return build


def _json_edit(rel: str, edit: Callable[[dict], None]):
    return lambda d, canary, scratch: _edit_json(d / rel, edit)


def _header_edit(rel: str, edit: Callable[[dict, bytes], bytes | None]):
    return lambda d, canary, scratch: _edit_header(d / rel, edit)


def _raw_header(rel: str, header: bytes, length: int | None = None):
    def build(d: Path, canary: Path, scratch: Path) -> None:
        _, data = _read_safetensors(d / rel)
        n = len(header) if length is None else length
        _write_bytes(d / rel, struct.pack("<Q", n) + header + data)

    return build


def _tensor_edit(rel: str, edit: Callable[[dict[str, torch.Tensor]], None]):
    return lambda d, canary, scratch: _edit_tensors(d / rel, edit)


def _poison(key: str, value: float):
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[key] = t[key].clone()
        t[key].view(-1)[0] = value

    return edit


def _truncate(rel: str, size: Callable[[int], int]):
    def build(d: Path, canary: Path, scratch: Path) -> None:
        raw = (d / rel).read_bytes()
        _write_bytes(d / rel, raw[: size(len(raw))])

    return build


def _remove(*rels: str):
    def build(d: Path, canary: Path, scratch: Path) -> None:
        for rel in rels:
            p = d / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                _unlink(p)

    return build


def _symlink(rel: str, target: Callable[[Path, Path], Path]):
    """Replace ``rel`` by a symlink to ``target(case folder, scratch folder)``."""

    def build(d: Path, canary: Path, scratch: Path) -> None:
        destination = target(d, scratch)
        _remove(rel)(d, canary, scratch)
        os.symlink(destination, d / rel)

    return build


def _outside_copy(rel: str):
    """A valid copy of ``rel`` outside the case folder (what an escaping symlink points to)."""

    def target(d: Path, scratch: Path) -> Path:
        dst = scratch / "outside" / d.name / Path(rel).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (d / rel).is_dir():
            shutil.copytree(d / rel, dst, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(d / rel), str(dst))
        return dst

    return target


def _fifo(rel: str):
    def build(d: Path, canary: Path, scratch: Path) -> None:
        _unlink(d / rel)
        os.mkfifo(d / rel)

    return build


def _empty_folder(d: Path, canary: Path, scratch: Path) -> None:
    shutil.rmtree(d)
    d.mkdir()


def _deep_json(depth: int = 100_000) -> bytes:
    return b"[" * depth + b"]" * depth


def _overlap(header: dict, data: bytes) -> None:
    a, b = _same_size_pair(header)
    header[b]["data_offsets"] = list(header[a]["data_offsets"])


def _offsets_outside(header: dict, data: bytes) -> None:
    header[_first_tensor(header)]["data_offsets"] = [0, len(data) + 4096]


def _polyglot(canary: Path) -> Callable[[dict, bytes], bytes]:
    return lambda header, data: data + pickle.dumps(CanaryPayload(canary), protocol=4)


G, TE = GENERATOR_WEIGHTS, TEXT_ENCODER_WEIGHTS
G_KEY, TE_KEY = "conv_out.weight", "text_model.final_layer_norm.weight"
UNSAFE, NOT_FOUND = UnsafePipelineError, FileNotFoundError

_SPECS: list[_Spec] = [
    # ---- pickles: never unpickled, whatever they are called
    _Spec(
        "pickle_bin_instead_of_safetensors",
        "pickle weights (.bin) replace the generator's safetensors",
        UNSAFE,
        "generator/diffusion_pytorch_model.bin",
        _replace_with_pickle(G, "generator/diffusion_pytorch_model.bin"),
    ),
    _Spec(
        "pickle_pt_text_encoder",
        "pickle weights (.pt) replace the text encoder's safetensors",
        UNSAFE,
        "text_encoder/pytorch_model.pt",
        _replace_with_pickle(TE, "text_encoder/pytorch_model.pt"),
    ),
    _Spec(
        "pickle_ckpt",
        "a pickle .ckpt next to the generator weights",
        UNSAFE,
        "generator/model.ckpt",
        _replace_with_pickle("generator/model.ckpt"),
    ),
    _Spec(
        "pickle_pth",
        "a pickle .pth next to the text-encoder weights",
        UNSAFE,
        "text_encoder/pytorch_model.pth",
        _replace_with_pickle("text_encoder/pytorch_model.pth"),
    ),
    _Spec(
        "pickle_next_to_valid_safetensors",
        "diffusion_pytorch_model.bin beside valid safetensors",
        UNSAFE,
        "generator/diffusion_pytorch_model.bin",
        _replace_with_pickle("generator/diffusion_pytorch_model.bin"),
    ),
    _Spec(
        "pickle_in_scheduler_folder",
        "a .pkl in the scheduler folder",
        UNSAFE,
        "scheduler/scheduler.pkl",
        _replace_with_pickle("scheduler/scheduler.pkl"),
    ),
    _Spec(
        "torch_zip_bin",
        "torch.save zip (data.pkl payload) as pytorch_model.bin",
        UNSAFE,
        "text_encoder/pytorch_model.bin",
        _replace_with_pickle("text_encoder/pytorch_model.bin", writer=write_torch_zip_payload),
    ),
    _Spec(
        "torch_zip_unknown_suffix",
        "torch.save zip under an unlisted suffix (.zip)",
        UNSAFE,
        "generator/weights.zip",
        _replace_with_pickle("generator/weights.zip", writer=write_torch_zip_payload),
    ),
    _Spec(
        "pickle_without_suffix",
        "a pickle with no file suffix",
        UNSAFE,
        "generator/weights",
        _replace_with_pickle("generator/weights"),
    ),
    _Spec(
        "pickle_renamed_safetensors",
        "a pickle renamed to the generator's .safetensors",
        UNSAFE,
        G,
        _replace_with_pickle(G),
    ),
    _Spec(
        "torch_zip_renamed_safetensors",
        "a torch.save zip renamed to the text encoder's .safetensors",
        UNSAFE,
        TE,
        _replace_with_pickle(TE, writer=write_torch_zip_payload),
    ),
    _Spec(
        "pickle_renamed_tokenizer_json",
        "a pickle renamed to tokenizer.json",
        UNSAFE,
        "tokenizer/tokenizer.json",
        _replace_with_pickle("tokenizer/tokenizer.json"),
    ),
    _Spec(
        "safetensors_with_appended_pickle",
        "valid tensors followed by a pickle payload (polyglot)",
        UNSAFE,
        G,
        lambda d, canary, s: _edit_header(d / G, _polyglot(canary)),
    ),
    # ---- code and remote-code markers
    _Spec(
        "custom_pipeline_with_py_file",
        "custom_pipeline in model_index.json naming a pipeline.py",
        UNSAFE,
        "pipeline.py",
        _add_python("pipeline.py", _set("custom_pipeline", "pipeline")),
    ),
    _Spec(
        "custom_pipeline_key",
        "custom_pipeline in model_index.json",
        UNSAFE,
        "custom_pipeline",
        _json_edit("model_index.json", _set("custom_pipeline", "hf-internal-testing/evil-pipeline")),
    ),
    _Spec(
        "class_name_names_module",
        "_class_name as [module, class] (diffusers' custom-pipeline form)",
        UNSAFE,
        "_class_name",
        _json_edit("model_index.json", _set("_class_name", ["pipeline_evil", "ProductImagePipeline"])),
    ),
    _Spec(
        "auto_map_in_model_index",
        "auto_map in model_index.json",
        UNSAFE,
        "auto_map",
        _json_edit("model_index.json", _set("auto_map", {"DiffusionPipeline": "pipeline_evil.Evil"})),
    ),
    _Spec(
        "trust_remote_code_in_model_index",
        "trust_remote_code in model_index.json",
        UNSAFE,
        "trust_remote_code",
        _json_edit("model_index.json", _set("trust_remote_code", True)),
    ),
    _Spec(
        "auto_map_in_text_encoder_config",
        "auto_map in text_encoder/config.json",
        UNSAFE,
        "auto_map",
        _json_edit("text_encoder/config.json", _set("auto_map", {"AutoModel": "modeling_evil.EvilModel"})),
    ),
    _Spec(
        "trust_remote_code_in_generator_config",
        "trust_remote_code in generator/config.json",
        UNSAFE,
        "trust_remote_code",
        _json_edit("generator/config.json", _set("trust_remote_code", True)),
    ),
    _Spec(
        "auto_map_in_tokenizer_config",
        "auto_map in tokenizer_config.json",
        UNSAFE,
        "auto_map",
        _json_edit(
            "tokenizer/tokenizer_config.json", _set("auto_map", {"AutoTokenizer": ["tok_evil.T", None]})
        ),
    ),
    _Spec(
        "auto_map_with_modeling_py",
        "auto_map plus the modeling_evil.py it names",
        UNSAFE,
        "text_encoder/modeling_evil.py",
        _add_python(
            "text_encoder/modeling_evil.py",
            _set("auto_map", {"AutoModel": "modeling_evil.EvilModel"}),
            "text_encoder/config.json",
        ),
    ),
    _Spec(
        "compiled_python_in_pycache",
        "a .pyc in a __pycache__ folder",
        UNSAFE,
        "generator/__pycache__/evil",
        _add_python("generator/__pycache__/evil.cpython-311.pyc"),
    ),
    _Spec(
        "hub_kernel_attention",
        "attn_implementation naming a Hub kernel repository",
        UNSAFE,
        "attn_implementation",
        _json_edit(
            "text_encoder/config.json", _set("attn_implementation", "kernels-community/evil-attention")
        ),
    ),
    # ---- foreign or disallowed classes in model_index.json
    _Spec(
        "foreign_library_os_system",
        "generator = (os, system)",
        UNSAFE,
        "component 'generator'",
        _json_edit("model_index.json", _set("generator", ["os", "system"])),
    ),
    _Spec(
        "foreign_flax_class",
        "generator = (diffusers, FlaxUNet2DConditionModel)",
        UNSAFE,
        "component 'generator'",
        _json_edit("model_index.json", _set("generator", ["diffusers", "FlaxUNet2DConditionModel"])),
    ),
    _Spec(
        "disallowed_prodimg_class",
        "generator = (prodimg, ProductDiscriminator)",
        UNSAFE,
        "component 'generator'",
        _json_edit("model_index.json", _set("generator", ["prodimg", "ProductDiscriminator"])),
    ),
    _Spec(
        "auto_class_text_encoder",
        "text_encoder = (transformers, AutoModel), which honours auto_map",
        UNSAFE,
        "component 'text_encoder'",
        _json_edit("model_index.json", _set("text_encoder", ["transformers", "AutoModel"])),
    ),
    _Spec(
        "foreign_pipeline_class",
        "_class_name = StableDiffusionPipeline",
        UNSAFE,
        "_class_name",
        _json_edit("model_index.json", _set("_class_name", "StableDiffusionPipeline")),
    ),
    _Spec(
        "extra_component",
        "an extra safety_checker = (evil, Checker) entry",
        UNSAFE,
        "safety_checker",
        _json_edit("model_index.json", _set("safety_checker", ["evil", "Checker"])),
    ),
    _Spec(
        "malformed_component_entry",
        "scheduler entry is a string, not [library, class]",
        UNSAFE,
        "component 'scheduler'",
        _json_edit("model_index.json", _set("scheduler", "prodimg.DDGANScheduler")),
    ),
    # ---- model_index.json / config files that are not JSON objects
    _Spec(
        "model_index_not_json",
        "model_index.json is not JSON",
        UNSAFE,
        "model_index.json",
        lambda d, c, s: _write_bytes(d / "model_index.json", b"\x00\xffnot json"),
    ),
    _Spec(
        "model_index_not_object",
        "model_index.json is a JSON list",
        UNSAFE,
        "model_index.json",
        lambda d, c, s: _write_bytes(d / "model_index.json", b'["ProductImagePipeline"]'),
    ),
    _Spec(
        "model_index_deeply_nested",
        "model_index.json nested 100,000 deep (recursion)",
        UNSAFE,
        "model_index.json",
        lambda d, c, s: _write_bytes(d / "model_index.json", _deep_json()),
    ),
    _Spec(
        "generator_config_not_json",
        "generator/config.json is not JSON",
        UNSAFE,
        "generator/config.json",
        lambda d, c, s: _write_bytes(d / "generator/config.json", b"{'python': 'literal'}"),
    ),
    _Spec(
        "tokenizer_json_invalid",
        "tokenizer.json is a JSON object that is no tokenizer",
        UNSAFE,
        "tokenizer/tokenizer.json",
        lambda d, c, s: _write_bytes(d / "tokenizer/tokenizer.json", b"{}"),
    ),
    # ---- malformed safetensors
    _Spec(
        "safetensors_truncated", "generator weights cut in half", UNSAFE, G, _truncate(G, lambda n: n // 2)
    ),
    _Spec(
        "safetensors_shorter_than_header",
        "text-encoder weights cut to 4 bytes",
        UNSAFE,
        TE,
        _truncate(TE, lambda n: 4),
    ),
    _Spec("safetensors_empty", "an empty weights file", UNSAFE, G, _truncate(G, lambda n: 0)),
    _Spec("header_length_too_big", "header length 2**62", UNSAFE, G, _raw_header(G, b"{}", length=2**62)),
    _Spec(
        "header_not_json", "header bytes are not JSON", UNSAFE, G, _raw_header(G, b"\x80\x04not json at all")
    ),
    _Spec("header_not_object", "header is a JSON list", UNSAFE, TE, _raw_header(TE, b"[1, 2, 3]")),
    _Spec(
        "header_deeply_nested",
        "header nested 100,000 deep (recursion)",
        UNSAFE,
        G,
        _raw_header(G, _deep_json()),
    ),
    _Spec(
        "header_offsets_outside_file",
        "a tensor's data_offsets end past the file",
        UNSAFE,
        G,
        _header_edit(G, _offsets_outside),
    ),
    _Spec(
        "header_unknown_dtype",
        "a tensor with dtype 'PICKLE'",
        UNSAFE,
        G,
        _header_edit(G, lambda h, d: h[_first_tensor(h)].__setitem__("dtype", "PICKLE")),
    ),
    _Spec(
        "header_shape_does_not_fit_bytes",
        "a tensor's shape needs more bytes than its offsets span",
        UNSAFE,
        G,
        _header_edit(G, lambda h, d: h[_first_tensor(h)].__setitem__("shape", [1 << 30, 1 << 30])),
    ),
    _Spec(
        "header_overlapping_tensors",
        "two tensors share the same bytes",
        UNSAFE,
        TE,
        _header_edit(TE, _overlap),
    ),
    _Spec(
        "header_metadata_not_strings",
        "__metadata__ holds a non-string value",
        UNSAFE,
        G,
        _header_edit(G, lambda h, d: h.__setitem__("__metadata__", {"format": {"nested": 1}})),
    ),
    # ---- weights that do not match the config
    _Spec(
        "wrong_shape_generator",
        f"generator {G_KEY} has the wrong shape",
        UNSAFE,
        G_KEY,
        _tensor_edit(G, lambda t: t.__setitem__(G_KEY, torch.zeros(3, 8, 1, 1))),
    ),
    _Spec(
        "wrong_shape_text_encoder",
        f"text encoder {TE_KEY} has the wrong shape",
        UNSAFE,
        TE_KEY,
        _tensor_edit(TE, lambda t: t.__setitem__(TE_KEY, torch.zeros(7))),
    ),
    _Spec(
        "int_weights_generator",
        f"generator {G_KEY} stored as int32",
        UNSAFE,
        G_KEY,
        _tensor_edit(G, lambda t: t.__setitem__(G_KEY, t[G_KEY].to(torch.int32))),
    ),
    _Spec(
        "bool_weights_text_encoder",
        f"text encoder {TE_KEY} stored as bool",
        UNSAFE,
        TE_KEY,
        _tensor_edit(TE, lambda t: t.__setitem__(TE_KEY, t[TE_KEY] > 0)),
    ),
    _Spec(
        "missing_tensor_generator",
        f"generator weights lack {G_KEY}",
        UNSAFE,
        G_KEY,
        _tensor_edit(G, lambda t: t.pop(G_KEY)),
    ),
    _Spec(
        "missing_tensor_text_encoder",
        f"text encoder weights lack {TE_KEY} (was silently re-initialised)",
        UNSAFE,
        TE_KEY,
        _tensor_edit(TE, lambda t: t.pop(TE_KEY)),
    ),
    _Spec(
        "unexpected_tensor",
        "an extra tensor 'backdoor.weight' in the generator weights",
        UNSAFE,
        "backdoor.weight",
        _tensor_edit(G, lambda t: t.__setitem__("backdoor.weight", torch.zeros(4))),
    ),
    _Spec(
        "nan_weight_generator",
        f"NaN in generator {G_KEY}",
        ValueError,
        G_KEY,
        _tensor_edit(G, _poison(G_KEY, float("nan"))),
        refused_before_loading=False,
    ),
    _Spec(
        "inf_weight_text_encoder",
        f"+Inf in text encoder {TE_KEY}",
        ValueError,
        TE_KEY,
        _tensor_edit(TE, _poison(TE_KEY, float("inf"))),
        refused_before_loading=False,
    ),
    _Spec(
        "neg_inf_fp16_generator",
        f"-Inf in an fp16 generator {G_KEY}",
        ValueError,
        G_KEY,
        _tensor_edit(G, lambda t: (_poison(G_KEY, float("-inf"))(t), t.__setitem__(G_KEY, t[G_KEY].half()))),
        refused_before_loading=False,
    ),
    # ---- absurd configs: refused before anything is allocated
    _Spec(
        "huge_block_out_channels",
        "generator block_out_channels [8, 4096] (~2 GB if built)",
        UNSAFE,
        "generator/diffusion_pytorch_model.safetensors",
        _json_edit("generator/config.json", _set("block_out_channels", [8, 4096])),
    ),
    _Spec(
        "huge_hidden_size",
        "text encoder hidden_size 65536 (~50 GB if built)",
        UNSAFE,
        TE,
        _json_edit("text_encoder/config.json", _set("hidden_size", 65536)),
    ),
    _Spec(
        "huge_vocab_size",
        "text encoder vocab_size 10**9",
        UNSAFE,
        "vocab_size",
        _json_edit("text_encoder/config.json", _set("vocab_size", 10**9)),
    ),
    _Spec(
        "huge_layer_count",
        "generator layers_per_block 100000",
        UNSAFE,
        "layers_per_block",
        _json_edit("generator/config.json", _set("layers_per_block", 100_000)),
    ),
    _Spec(
        "huge_sample_size",
        "generator sample_size 65536 (the call would allocate 50 GB)",
        UNSAFE,
        "sample_size",
        _json_edit("generator/config.json", _set("sample_size", 65536)),
    ),
    _Spec(
        "negative_channels",
        "generator block_out_channels [8, -16]",
        UNSAFE,
        "generator/config.json",
        _json_edit("generator/config.json", _set("block_out_channels", [8, -16])),
    ),
    _Spec(
        "huge_scheduler_timesteps",
        "scheduler num_train_timesteps 10**9",
        UNSAFE,
        "num_train_timesteps",
        _json_edit("scheduler/scheduler_config.json", _set("num_train_timesteps", 10**9)),
    ),
    _Spec(
        "nan_in_scheduler_config",
        "scheduler beta_max NaN",
        UNSAFE,
        "beta_max",
        _json_edit("scheduler/scheduler_config.json", _set("beta_max", float("nan"))),
    ),
    # ---- symlinks and special files
    _Spec(
        "symlink_file_escapes",
        "generator weights are a symlink to a file outside the folder",
        UNSAFE,
        G,
        _symlink(G, _outside_copy(G)),
    ),
    _Spec(
        "symlink_dir_escapes",
        "text_encoder is a symlink to a folder outside",
        UNSAFE,
        "text_encoder",
        _symlink("text_encoder", _outside_copy("text_encoder")),
    ),
    _Spec(
        "symlink_to_system_file",
        "tokenizer/vocab.json -> /etc/passwd",
        UNSAFE,
        "tokenizer/vocab.json",
        _symlink("tokenizer/vocab.json", lambda d, s: Path("/etc/passwd")),
    ),
    _Spec(
        "symlink_loop",
        "generator weights are a symlink to themselves",
        UNSAFE,
        G,
        _symlink(G, lambda d, s: d / G),
    ),
    _Spec(
        "symlink_dangling",
        "a symlink to a missing file",
        UNSAFE,
        "generator/extra.safetensors",
        _symlink("generator/extra.safetensors", lambda d, s: d / "generator" / "nowhere.safetensors"),
    ),
    _Spec(
        "fifo_as_weights",
        "generator weights are a FIFO (opening it would block forever)",
        UNSAFE,
        G,
        _fifo(G),
    ),
    # ---- missing pieces
    _Spec("empty_folder", "an empty folder", NOT_FOUND, "model_index.json", _empty_folder),
    _Spec(
        "missing_component_folder",
        "the generator folder is missing",
        NOT_FOUND,
        "'generator'",
        _remove("generator"),
    ),
    _Spec("missing_weights", "the generator weights are missing", NOT_FOUND, "generator", _remove(G)),
    _Spec(
        "weights_under_other_name",
        "the generator weights are valid but named weights.safetensors, which no loader reads",
        NOT_FOUND,
        "diffusion_pytorch_model.safetensors",
        lambda d, c, s: os.rename(d / G, d / "generator" / "weights.safetensors"),
    ),
    _Spec(
        "missing_component_config",
        "generator/config.json is missing",
        NOT_FOUND,
        "generator",
        _remove("generator/config.json"),
    ),
    _Spec(
        "missing_scheduler_config",
        "scheduler_config.json is missing",
        NOT_FOUND,
        "scheduler_config.json",
        _remove("scheduler/scheduler_config.json"),
    ),
    _Spec(
        "empty_tokenizer_folder",
        "the tokenizer folder is empty (loaded a 2-token tokenizer)",
        NOT_FOUND,
        "tokenizer",
        _remove("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"),
    ),
]

CASE_NAMES: list[str] = [s.name for s in _SPECS]


def build_hostile_corpus(root: Path, base_pipeline_dir: Path) -> list[HostileCase]:
    """Build every case under ``root`` (``root/cases/<name>``, canaries in ``root/canaries``) from the
    valid saved pipeline ``base_pipeline_dir``, which is left unchanged."""
    root, base = Path(root), Path(base_pipeline_dir)
    for sub in ("cases", "canaries", "scratch"):  # start clean: no stale canary, no half-built case
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    scratch = root / "scratch"
    cases = []
    for spec in _SPECS:
        if spec.name == "fifo_as_weights" and not hasattr(os, "mkfifo"):
            continue
        folder = root / "cases" / spec.name
        shutil.copytree(base, folder, copy_function=_link_or_copy, symlinks=True)
        canary = root / "canaries" / f"{spec.name}.canary"
        spec.build(folder, canary, scratch)
        cases.append(
            HostileCase(
                spec.name,
                folder,
                spec.attack,
                spec.expected_error,
                spec.names,
                canary,
                spec.refused_before_loading,
            )
        )
    return cases


# ============================================================================================ the check
@contextlib.contextmanager
def _record_calls(owner, attr: str, calls: list[str]) -> Iterator[None]:
    original = getattr(owner, attr)

    def recorder(*args, **kwargs):
        calls.append(f"{getattr(owner, '__name__', owner)}.{attr}")
        return original(*args, **kwargs)

    setattr(owner, attr, recorder)
    try:
        yield
    finally:
        setattr(owner, attr, original)


@contextlib.contextmanager
def _record_loader(calls: list[str]) -> Iterator[None]:
    """Record whether diffusers' ``DiffusionPipeline.from_pretrained`` (the component loaders) ran."""
    from diffusers import DiffusionPipeline

    original = DiffusionPipeline.__dict__["from_pretrained"]

    def recorder(cls, *args, **kwargs):
        calls.append("DiffusionPipeline.from_pretrained")
        return original.__func__(cls, *args, **kwargs)

    DiffusionPipeline.from_pretrained = classmethod(recorder)
    try:
        yield
    finally:
        DiffusionPipeline.from_pretrained = original


def _modules_from(case_path: Path, before: set[str]) -> list[str]:
    """Modules whose file lies in the case folder, plus new transformers/diffusers dynamic modules."""
    prefixes = tuple({os.path.join(str(case_path), ""), os.path.join(os.path.realpath(case_path), "")})
    found = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str):
            file = ""
        if name not in before:  # only new modules can have been imported through a symlink
            file = os.path.realpath(file) if file else file
            if name.startswith(DYNAMIC_MODULE_PREFIXES):
                found.append(name)
                continue
        if file.startswith(prefixes):
            found.append(name)
    return found


def check_hostile_case(case: HostileCase) -> tuple[bool, str]:
    """Load ``case`` with ``ProductImagePipeline.from_pretrained``; return ``(refused, error)``.

    ``refused`` is True when loading raised ``case.expected_error`` whose message names ``case.names``
    (the case folder's own path is blanked out first, so a folder name cannot satisfy it); ``error`` is
    ``"<ExceptionType>: <message>"`` (or says that the folder loaded). Raises ``HostileFileBreach`` if
    the canary was written, a module was imported from the folder, ``torch.load`` or ``pickle`` was
    called, a case that ``check_pipeline_folder`` must stop reached the loaders, or loading hung.
    """
    from ..pipeline import ProductImagePipeline

    folder = Path(os.path.realpath(case.path))
    before = set(sys.modules)
    unpickled: list[str] = []
    loader: list[str] = []
    err: BaseException | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(time_limit(LOAD_TIME_LIMIT, lambda m: HostileFileBreach(f"loading {m}")))
        stack.enter_context(_record_calls(torch, "load", unpickled))
        stack.enter_context(_record_calls(pickle, "load", unpickled))
        stack.enter_context(_record_calls(pickle, "loads", unpickled))
        stack.enter_context(_record_loader(loader))
        try:
            ProductImagePipeline.from_pretrained(case.path)
        except HostileFileBreach:
            raise
        except Exception as e:  # noqa: BLE001 - judged below: only the documented type counts as refused
            err = e

    breaches = []
    if case.canary.exists():
        breaches.append(f"the canary {case.canary} was written: code from the folder ran")
    imported = _modules_from(case.path, before)
    if imported:
        breaches.append(f"modules were imported from the folder: {imported}")
    if unpickled:
        breaches.append(f"unpickling was attempted: {sorted(set(unpickled))}")
    if case.refused_before_loading and loader:
        breaches.append("the folder check let it through to the component loaders")
    if breaches:
        raise HostileFileBreach(f"{case.name}: " + "; ".join(breaches))

    if err is None:
        return False, "loaded without an error"
    message = str(err)
    error = f"{type(err).__name__}: {message}"
    names_it = case.names in message.replace(str(case.path), "<folder>").replace(str(folder), "<folder>")
    return isinstance(err, case.expected_error) and names_it, error
