"""ONNX export, onnxruntime execution and int8 quantisation of a ProductImagePipeline.

- :func:`export_onnx` writes an export folder (``prodimg export onnx --pipeline DIR --out DIR2``):
  the text encoder and the generator as ONNX graphs with a dynamic batch axis, plus the tokenizer,
  the scheduler config and the component configs; optionally an int8 generator.
- :func:`load_onnx_pipeline` returns the *same* :class:`~prodimg.ProductImagePipeline` class with
  onnxruntime-backed stand-ins for the text encoder and the generator, so the sampling loop and the
  scheduler math stay in :class:`~prodimg.DDGANScheduler` (``prodimg generate --backend onnxruntime``).
- :func:`quantize_generator_int8`: onnxruntime static (QDQ, per-channel) int8 quantisation of the
  generator, calibrated on the generator inputs the pipeline itself produces.

Needs the ``onnx`` extra (``onnx``, ``onnxruntime``, ``onnxscript``); importing this package does not.
"""

from .onnx_export import (
    FP32_TOLERANCE,
    ONNX_INDEX_NAME,
    export_onnx,
    is_onnx_export,
)
from .ort_pipeline import OrtGenerator, OrtTextEncoder, load_onnx_pipeline
from .quantize import calibration_prompts, collect_generator_inputs, quantize_generator_int8

__all__ = [
    "FP32_TOLERANCE",
    "ONNX_INDEX_NAME",
    "OrtGenerator",
    "OrtTextEncoder",
    "calibration_prompts",
    "collect_generator_inputs",
    "export_onnx",
    "is_onnx_export",
    "load_onnx_pipeline",
    "quantize_generator_int8",
]
