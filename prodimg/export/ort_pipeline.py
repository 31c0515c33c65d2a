"""onnxruntime-backed stand-ins for the text encoder and the generator.

They are ``torch.nn.Module`` s with the attributes and call signatures the pipeline uses
(``config``, ``device``, ``dtype``; ``text_encoder(input_ids=..., attention_mask=...)`` and
``generator(sample, timestep, z, encoder_hidden_states, pooled_text_embeds, encoder_attention_mask)``),
so :func:`load_onnx_pipeline` builds an ordinary :class:`~prodimg.ProductImagePipeline`: prompt
checks, classifier-free guidance, the seeded noise and the DDGAN scheduler step are the PyTorch
code paths; only the two networks run on onnxruntime. Tensors cross as CPU numpy arrays.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import FrozenDict
from torch import nn

from ..models.generator import ProductGeneratorOutput
from .onnx_export import (
    GENERATOR_INPUTS,
    GENERATOR_OUTPUTS,
    TEXT_ENCODER_INPUTS,
    TEXT_ENCODER_OUTPUTS,
    read_onnx_index,
)


@dataclass
class OrtTextEncoderOutput:
    last_hidden_state: torch.Tensor
    text_embeds: torch.Tensor


def make_session(path: str | os.PathLike, num_threads: int | None = None, providers: list[str] | None = None):
    """An ``onnxruntime.InferenceSession`` with ``num_threads`` intra-op threads (default: torch's count,
    so that one setting governs both backends)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(num_threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


class _OrtModule(nn.Module):
    """Parameterless module reporting CPU / float32, so the pipeline places its tensors there."""

    def __init__(self, session, config):
        super().__init__()
        self.session = session
        self.config = config

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32


class OrtTextEncoder(_OrtModule):
    """Stand-in for ``CLIPTextModel(WithProjection)``: returns ``last_hidden_state`` and the pooled
    embedding (as ``text_embeds``, which the pipeline reads first)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {
            "input_ids": input_ids.detach().cpu().numpy().astype(np.int64),
            "attention_mask": attention_mask.detach().cpu().numpy().astype(np.int64),
        }
        hidden, pooled = self.session.run(TEXT_ENCODER_OUTPUTS, feed)
        return OrtTextEncoderOutput(last_hidden_state=torch.from_numpy(hidden), text_embeds=torch.from_numpy(pooled))


class OrtGenerator(_OrtModule):
    """Stand-in for :class:`~prodimg.ProductGenerator` (``config`` is the generator's config)."""

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        z: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_text_embeds: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        b = sample.shape[0]
        timestep = torch.as_tensor(timestep).reshape(-1)
        if timestep.numel() == 1:
            timestep = timestep.expand(b)
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long)

        def f32(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().float().numpy()

        feed = dict(zip(GENERATOR_INPUTS, (
            f32(sample),
            timestep.detach().cpu().numpy().astype(np.int64),
            f32(z),
            f32(encoder_hidden_states),
            f32(pooled_text_embeds),
            encoder_attention_mask.detach().cpu().numpy().astype(np.int64),
        )))
        out = torch.from_numpy(self.session.run(GENERATOR_OUTPUTS, feed)[0])
        if not return_dict:
            return (out,)
        return ProductGeneratorOutput(sample=out)


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def load_onnx_pipeline(
    path: str | os.PathLike,
    *,
    int8: bool = False,
    num_threads: int | None = None,
    providers: list[str] | None = None,
):
    """A :class:`~prodimg.ProductImagePipeline` whose text encoder and generator run on onnxruntime.

    ``path`` is a folder written by ``prodimg export onnx``; ``int8`` picks its int8 generator (the
    export must have been made with ``--int8``). The pipeline's ``pipeline_id`` attribute names the
    source pipeline, the backend and a digest of the ONNX files.
    """
    from transformers import CLIPTextConfig, CLIPTokenizer

    from ..models import ProductGenerator
    from ..pipeline import ProductImagePipeline
    from ..schedulers import DDGANScheduler

    path = Path(path)
    index = read_onnx_index(path)
    files = index["files"]
    key = "generator_int8" if int8 else "generator"
    if key not in files:
        raise ValueError(f"{path} has no int8 generator; re-export with `prodimg export onnx ... --int8`")
    for name in ("text_encoder", key):
        if not (path / files[name]).is_file():
            raise FileNotFoundError(f"{path / files[name]} is missing (listed in {path / 'onnx_index.json'})")
    if index["inputs"] != {"text_encoder": TEXT_ENCODER_INPUTS, "generator": GENERATOR_INPUTS}:
        raise ValueError(f"{path}: ONNX inputs {index['inputs']} do not match this prodimg version")

    tokenizer = CLIPTokenizer.from_pretrained(str(path / "tokenizer"), local_files_only=True)
    scheduler = DDGANScheduler.from_config(DDGANScheduler.load_config(str(path / "scheduler")))
    gen_config = FrozenDict(ProductGenerator.load_config(str(path / "generator")))
    te_config = CLIPTextConfig.from_pretrained(str(path / "text_encoder"), local_files_only=True)
    text_encoder = OrtTextEncoder(make_session(path / files["text_encoder"], num_threads, providers), te_config)
    generator = OrtGenerator(make_session(path / files[key], num_threads, providers), gen_config)
    pipe = ProductImagePipeline(tokenizer=tokenizer, text_encoder=text_encoder, generator=generator, scheduler=scheduler)
    digest = _digest([path / files["text_encoder"], path / files[key]])
    pipe.pad_prompts_to_max_length = True  # the ONNX text encoder's sequence length is fixed
    pipe.pipeline_id = f"{index['source_pipeline']}+onnx{'-int8' if int8 else ''}@{digest}"
    return pipe
