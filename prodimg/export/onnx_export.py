"""Export the text encoder and the generator of a ProductImagePipeline to ONNX (dynamic batch).

Export folder layout (``prodimg export onnx --pipeline DIR --out DIR2``)::

    DIR2/
      onnx_index.json             format marker, source pipeline id, opset, files, measured errors
      tokenizer/                  the CLIP tokenizer (save_pretrained)
      scheduler/scheduler_config.json
      text_encoder/config.json    CLIPTextConfig
      text_encoder/model.onnx     (input_ids, attention_mask) -> (last_hidden_state, pooled)
      generator/config.json       ProductGenerator config
      generator/model.onnx        (sample, timestep, z, encoder_hidden_states, pooled_text_embeds,
                                   encoder_attention_mask) -> sample_out
      generator/model.int8.onnx   with --int8: static QDQ int8 quantisation (see ``quantize.py``)

Every input and output has a dynamic batch axis ``batch``; the text length is the text encoder's
``max_position_embeddings`` (the pipeline always pads to it). Weights are embedded in the ``.onnx``
files (no external data). The export is written to a temporary folder and renamed into place, and
it is checked on a batch size other than the traced one before that happens.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils import atomic_directory, atomic_write_text

ONNX_INDEX_NAME = "onnx_index.json"
FORMAT = "prodimg-onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 18
MAX_OPSET = 22
"""The newest opset verified with both exporters and onnxruntime (a dynamo export at 23 fails onnxruntime)."""
EXPORTERS = ("dynamo", "torchscript")

TEXT_ENCODER_INPUTS = ["input_ids", "attention_mask"]
TEXT_ENCODER_OUTPUTS = ["last_hidden_state", "pooled"]
GENERATOR_INPUTS = [
    "sample",
    "timestep",
    "z",
    "encoder_hidden_states",
    "pooled_text_embeds",
    "encoder_attention_mask",
]
GENERATOR_OUTPUTS = ["sample_out"]

FP32_TOLERANCE = 1e-4
"""Max abs difference between onnxruntime fp32 and PyTorch fp32 pipeline images (values in [0, 1],
same seeds, CPU). Measured: about 1e-6 on the tiny test pipeline; tested in tests/test_export.py."""
EXPORT_CHECK_TOLERANCE = 1e-3
"""Max abs difference of raw component outputs accepted by the post-export check."""


class TextEncoderForExport(nn.Module):
    """``(input_ids, attention_mask) -> (last_hidden_state, pooled)``, pooled as the pipeline uses it."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        return out.last_hidden_state, pooled


class GeneratorForExport(nn.Module):
    """The generator with a per-sample ``timestep`` of shape (B,) and a plain tensor output."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, sample, timestep, z, encoder_hidden_states, pooled_text_embeds, encoder_attention_mask):
        return self.generator(
            sample, timestep, z, encoder_hidden_states, pooled_text_embeds, encoder_attention_mask, return_dict=False
        )[0]


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints, its torchvision notices and deprecation chatter."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_module(
    module: nn.Module,
    args: tuple,
    path: str | os.PathLike,
    input_names: list[str],
    output_names: list[str],
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> None:
    """``torch.onnx.export`` with axis 0 of every input and output dynamic (``batch``)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    module = module.eval()
    with _quiet_exporter(), torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                module, args, str(path), input_names=input_names, output_names=output_names,
                dynamic_shapes=tuple({0: batch} for _ in input_names), dynamo=True, opset_version=opset,
                external_data=False, verbose=False,
            )
        else:
            torch.onnx.export(
                module, args, str(path), input_names=input_names, output_names=output_names,
                dynamic_axes={name: {0: "batch"} for name in input_names + output_names}, dynamo=False,
                opset_version=opset, external_data=False, verbose=False,
            )


def is_onnx_export(path: str | os.PathLike) -> bool:
    return (Path(path) / ONNX_INDEX_NAME).is_file()


def read_onnx_index(path: str | os.PathLike) -> dict[str, Any]:
    index_path = Path(path) / ONNX_INDEX_NAME
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a prodimg ONNX export (no {ONNX_INDEX_NAME}); create one with "
            "`prodimg export onnx --pipeline DIR --out DIR2`"
        )
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT or index.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{index_path} has format {index.get('format')!r} version {index.get('format_version')!r}; "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    return index


@contextlib.contextmanager
def max_length_prompts(pipe):
    """Within the block ``pipe`` pads prompts to the text encoder's full length: the exported graphs
    take fixed-length token sequences (tracing, the export check and int8 calibration run in here)."""
    previous = pipe.pad_prompts_to_max_length
    pipe.pad_prompts_to_max_length = True
    try:
        yield pipe
    finally:
        pipe.pad_prompts_to_max_length = previous


def _example_inputs(pipe, batch: int, seed: int):
    prompts = ["red striped dress", "a pair of blue sneakers, product photo", "black leather bag"] * batch
    with max_length_prompts(pipe):
        input_ids, attention_mask = pipe._tokenize(prompts[:batch])
        embeds = pipe.encode_text(prompts[:batch], device=torch.device("cpu"))
    cfg = pipe.generator.config
    gen = torch.Generator().manual_seed(seed)
    gen_args = (
        torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen),
        torch.randint(0, cfg.num_train_timesteps, (batch,), generator=gen),
        torch.randn(batch, cfg.z_dim, generator=gen),
        embeds.hidden_states,
        embeds.pooled,
        embeds.attention_mask,
    )
    return (input_ids, attention_mask), gen_args


def _max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def check_export(pipe, folder: str | os.PathLike, batch: int = 3) -> dict[str, float]:
    """Run both ONNX graphs on onnxruntime at a batch size other than the traced one; return the max
    abs difference to PyTorch per output (raises ``RuntimeError`` above ``EXPORT_CHECK_TOLERANCE``)."""
    import onnxruntime as ort

    folder = Path(folder)
    te_args, gen_args = _example_inputs(pipe, batch, seed=1)
    errors: dict[str, float] = {}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    with torch.no_grad():
        te_ref = TextEncoderForExport(pipe.text_encoder)(*te_args)
        gen_ref = GeneratorForExport(pipe.generator)(*gen_args)
    te = ort.InferenceSession(str(folder / "text_encoder" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    te_out = te.run(TEXT_ENCODER_OUTPUTS, {n: t.numpy() for n, t in zip(TEXT_ENCODER_INPUTS, te_args)})
    for name, ref, got in zip(TEXT_ENCODER_OUTPUTS, te_ref, te_out):
        errors[f"text_encoder.{name}"] = _max_abs(ref.numpy(), got)
    gen = ort.InferenceSession(str(folder / "generator" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    out = gen.run(GENERATOR_OUTPUTS, {n: t.numpy() for n, t in zip(GENERATOR_INPUTS, gen_args)})[0]
    errors["generator.sample_out"] = _max_abs(gen_ref.numpy(), out)
    bad = {k: v for k, v in errors.items() if not v <= EXPORT_CHECK_TOLERANCE}
    if bad:
        raise RuntimeError(f"ONNX export check failed at batch {batch}: max abs differences {bad} exceed {EXPORT_CHECK_TOLERANCE}")
    return errors


def export_onnx(
    pipe,
    out_dir: str | os.PathLike,
    *,
    source_id: str,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    int8: bool = False,
    calibration_prompts: list[str] | None = None,
    calibration_seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``pipe`` (fp32, CPU) to ``out_dir``; with ``int8`` also write a calibrated int8 generator.

    Returns the written ``onnx_index.json`` content. ``source_id`` is the pipeline id recorded as the
    export's provenance (see :func:`prodimg.catalog_generation.pipeline_id`).
    """
    from transformers import CLIPTextModelWithProjection

    if pipe.generator.dtype != torch.float32 or pipe.text_encoder.dtype != torch.float32:
        raise ValueError(
            f"export a float32 pipeline (got generator {pipe.generator.dtype}, text encoder {pipe.text_encoder.dtype}); "
            "the int8 variant is made by --int8"
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or not 17 <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an int in 17..{MAX_OPSET}, got {opset!r}")
    pipe = pipe.to("cpu")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    te_args, gen_args = _example_inputs(pipe, batch=2, seed=0)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        pipe.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        pipe.scheduler.save_config(str(tmp / "scheduler"))
        pipe.generator.save_config(str(tmp / "generator"))
        pipe.text_encoder.config.save_pretrained(str(tmp / "text_encoder"))
        export_module(
            TextEncoderForExport(pipe.text_encoder), te_args, tmp / "text_encoder" / "model.onnx",
            TEXT_ENCODER_INPUTS, TEXT_ENCODER_OUTPUTS, opset, exporter,
        )
        export_module(
            GeneratorForExport(pipe.generator), gen_args, tmp / "generator" / "model.onnx",
            GENERATOR_INPUTS, GENERATOR_OUTPUTS, opset, exporter,
        )
        errors = check_export(pipe, tmp)
        files = {"text_encoder": "text_encoder/model.onnx", "generator": "generator/model.onnx"}
        int8_info = None
        if int8:
            from .quantize import calibration_prompts as default_prompts
            from .quantize import collect_generator_inputs, quantize_generator_int8

            prompts = calibration_prompts or default_prompts()
            with max_length_prompts(pipe):
                feeds = collect_generator_inputs(pipe, prompts, seed=calibration_seed)
            int8_info = quantize_generator_int8(tmp / "generator" / "model.onnx", tmp / "generator" / "model.int8.onnx", feeds)
            int8_info["calibration_prompts"] = len(prompts)
            files["generator_int8"] = "generator/model.int8.onnx"
        index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "_class_name": type(pipe).__name__,
            "source_pipeline": source_id,
            "text_encoder_class": type(pipe.text_encoder).__name__,
            "pooled_output": "text_embeds" if isinstance(pipe.text_encoder, CLIPTextModelWithProjection) else "pooler_output",
            "opset": opset,
            "exporter": exporter,
            "torch_version": torch.__version__,
            "files": files,
            "inputs": {"text_encoder": TEXT_ENCODER_INPUTS, "generator": GENERATOR_INPUTS},
            "outputs": {"text_encoder": TEXT_ENCODER_OUTPUTS, "generator": GENERATOR_OUTPUTS},
            "export_check_max_abs_error": errors,
            "fp32_pipeline_tolerance": FP32_TOLERANCE,
            "int8": int8_info,
        }
        atomic_write_text(tmp / ONNX_INDEX_NAME, json.dumps(index, indent=2) + "\n")
    return index
