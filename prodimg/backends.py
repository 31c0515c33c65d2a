"""Loading a pipeline for one of the sampling backends (``--backend`` of ``prodimg generate`` and
``prodimg eval``): PyTorch weights, or an ONNX export run on onnxruntime (fp32 or int8)."""

from __future__ import annotations

import os

BACKENDS = ("pytorch", "onnxruntime")
# --dtype of the pytorch backend. bfloat16 samples faster on CPUs with native bf16 (AVX512-BF16, AMX):
# see the shipped pipeline's model card for its measured speed and quality.
DTYPES = ("float32", "bfloat16", "float16")


def check_num_threads(num_threads: int | None) -> None:
    """``--num_threads``: None or 1..the CPU count (a huge count exhausts memory creating threads)."""
    limit = os.cpu_count() or 1
    if num_threads is not None and not 1 <= num_threads <= limit:
        raise ValueError(f"--num_threads must be between 1 and {limit} (the CPU count), got {num_threads}")


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` that torch cannot parse or this machine lacks (a ValueError, not a traceback)."""
    import torch

    if device is None:
        return
    try:
        if torch.device(device).type == "meta":
            raise ValueError("the meta device holds no weights")
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ValueError(f"--device {device!r} is not usable on this machine: {err}") from None


def load_pipeline(pipeline_path: str, backend: str = "pytorch", device: str | None = "cpu", int8: bool = False,
                  num_threads: int | None = None, dtype: str = "float32", compile: bool = False):
    """The pipeline to sample from: PyTorch weights (every component in ``dtype``), or an ONNX export run
    on onnxruntime. ``compile``: ``torch.compile`` the generator in place (``nn.Module.compile``: its
    parameters and checkpoint keys stay as they are); the first call of each batch shape compiles."""
    from .export.onnx_export import is_onnx_export
    from .pipeline import ProductImagePipeline

    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    check_num_threads(num_threads)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    if backend == "onnxruntime":
        if dtype != "float32":
            raise ValueError(f"--dtype {dtype} is for the pytorch backend; onnxruntime runs the export's own "
                             "precision (--int8 for the quantized generator)")
        if device not in (None, "cpu"):
            raise ValueError(f"--backend onnxruntime runs on the CPU; got --device {device}")
        if compile:
            raise ValueError("--compile is for the pytorch backend (torch.compile); onnxruntime optimises its "
                             "own graph")
        from .export import load_onnx_pipeline

        return load_onnx_pipeline(pipeline_path, int8=int8, num_threads=num_threads)
    if int8:
        raise ValueError("--int8 needs --backend onnxruntime and an export made with `prodimg export onnx --int8`")
    if is_onnx_export(pipeline_path):
        raise ValueError(f"{pipeline_path} is an ONNX export; pass --backend onnxruntime to run it")
    check_device(device)
    import torch

    pipe = ProductImagePipeline.from_pretrained(pipeline_path, dtype=getattr(torch, dtype))
    pipe = pipe.to(device or "cpu")
    if compile:
        pipe.generator.compile()
    return pipe


def warm_up_compiled(pipe, batch_sizes, prompts, num_inference_steps: int | None = None,
                     guidance_scale: float = 1.0, seed: int = 0, log=None) -> float:
    """Run a compiled pipeline, untimed, at every batch size in ``batch_sizes`` with the shortest and the
    longest of ``prompts`` (prompts are padded to the longest in their batch, so the text length varies
    between calls): the recompilations that make those dimensions dynamic happen here, not in the first
    timed or served calls. Returns the seconds it took."""
    import time

    import torch

    start = time.perf_counter()
    prompts = sorted(set(prompts))
    lengths = [len(ids) for ids in pipe.tokenizer(prompts).input_ids]
    prompts = [p for _, p in sorted(zip(lengths, prompts))]
    for n in sorted(set(batch_sizes) - {0}):
        for chosen in (prompts[:n], prompts[-n:]):
            if log is not None:
                log(f"torch.compile: warming up the generator on batch {n}")
            pipe((chosen * n)[:n], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                 generator=torch.Generator(pipe._execution_device).manual_seed(seed), output_type="np")
    return time.perf_counter() - start
