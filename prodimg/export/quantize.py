"""int8 quantisation of the exported generator for CPU inference (onnxruntime tooling).

Static quantisation, QDQ format: int8 per-channel weights and uint8 activations whose ranges are
calibrated (MinMax) on the generator inputs that the pipeline itself feeds the generator: catalogue
style captions, the seeded starting noise and every denoising step's ``x_t``. Static rather than
dynamic because onnxruntime's dynamic path turns convolutions into ``ConvInteger``, which was about 5x
*slower* than fp32 here, whereas static QDQ convolutions and matmuls run on its int8 kernels
(measured numbers: ``benchmarks/inference.py``). Only Conv/MatMul/Gemm are quantised, and the first
and last convolutions stay float. The text encoder stays fp32 (run once per
prompt, a small share of the pipeline's time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .onnx_export import GENERATOR_INPUTS

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
"""Only the compute-heavy ops: quantising the elementwise ones as well (SiLU, modulation) was slower
and less accurate here (and broke shape inference on the tiny test generator)."""


def _first_and_last_conv(model_path: Path) -> list[str]:
    """The convolution reading the image and the one writing it stay float: they carry most of the
    visible error for little of the time."""
    import onnx

    convs = [n for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type == "Conv"]
    names = [n.name for n in convs if "sample" in n.input]
    if convs:
        names.append(convs[-1].name)
    return sorted(set(names))


def calibration_prompts(n: int = 64, seed: int = 0) -> list[str]:
    """``n`` catalogue-style captions (every category, colour and pattern), deterministic for ``seed``."""
    from ..data.captions import CATEGORY_NAMES, N_CAPTION_UNIFORMS, PATTERN_ADJECTIVES, make_caption
    from ..data.colors import COLOR_NAMES

    rng = np.random.default_rng(seed)
    patterns = list(PATTERN_ADJECTIVES)
    return [
        make_caption(
            CATEGORY_NAMES[i % len(CATEGORY_NAMES)],
            COLOR_NAMES[(i * 7) % len(COLOR_NAMES)],
            patterns[(i * 3) % len(patterns)],
            rng.random(N_CAPTION_UNIFORMS),
        )
        for i in range(n)
    ]


@torch.no_grad()
def collect_generator_inputs(
    pipe,
    prompts: list[str],
    batch_size: int = 16,
    seed: int = 0,
    num_inference_steps: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Run ``pipe`` on ``prompts`` and record every generator call's inputs as onnxruntime feeds."""
    feeds: list[dict[str, np.ndarray]] = []

    def hook(module, args, kwargs):
        sample, timestep, z, hidden, pooled, mask = args[:6]
        b = sample.shape[0]
        t = torch.as_tensor(timestep).reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t
        values = (sample, t.long(), z, hidden, pooled, mask.long())
        feeds.append({n: v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
                      for n, v in zip(GENERATOR_INPUTS, values)})

    handle = pipe.generator.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            pipe(chunk, generator=gens, num_inference_steps=num_inference_steps, output_type="pt")
    finally:
        handle.remove()
    return feeds


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantiser logs a root-logger warning per tensor whose type shape inference could not
    settle (batch is dynamic); those tensors stay float, which is what we want."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_generator_int8(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration_feeds: list[dict[str, np.ndarray]],
    per_channel: bool = True,
) -> dict[str, Any]:
    """Write a static-QDQ int8 version of the generator ONNX graph; returns a description for the index."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_feeds:
        raise ValueError("calibration_feeds is empty; pass the generator inputs of at least one pipeline call")

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict[str, np.ndarray]]):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        exclude = _first_and_last_conv(pre)
        quantize_static(
            str(pre),
            str(int8_path),
            Reader(calibration_feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=exclude,
        )
    return {
        "method": "onnxruntime static quantisation, QDQ, MinMax calibration",
        "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
        "activations": "uint8",
        "quantized_ops": list(QUANTIZED_OPS),
        "kept_float": "the first and the last convolution (image in, image out)",
        "calibration_batches": len(calibration_feeds),
    }
