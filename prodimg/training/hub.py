"""Model cards and Hub upload for training outputs (huggingface_hub's standard API only).

:func:`push_folder_to_hub` calls ``HfApi.create_repo`` and ``HfApi.upload_folder`` with an explicit
allow-list, so checkpoints, logs and other training by-products in the output folder are never
sent. :func:`files_to_upload` computes exactly the files that call sends (with huggingface_hub's
own pattern filter), for logging and for tests. Before anything is sent, every safetensors file among
them is read and a folder holding NaN or Inf weights is refused (:func:`check_finite_weights`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects

from ..utils import atomic_write_text

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What a ProductImagePipeline repository consists of (plus its card and sample grid).
PIPELINE_UPLOAD_PATTERNS = [
    "model_index.json",
    "tokenizer/*",
    "text_encoder/*",
    "generator/*",
    "scheduler/*",
    "README.md",
    "samples.png",
]


def files_to_upload(
    folder: str | os.PathLike, allow_patterns: Sequence[str] = PIPELINE_UPLOAD_PATTERNS
) -> list[str]:
    """Relative POSIX paths of the files ``upload_folder(allow_patterns=...)`` would send."""
    root = Path(folder)
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, allow_patterns=list(allow_patterns)))


def check_finite_weights(folder: str | os.PathLike, files: Sequence[str]) -> None:
    """Raise ``ValueError`` if any ``.safetensors`` file among ``files`` (relative to ``folder``) holds a
    NaN or Inf in a floating-point tensor."""
    from safetensors import safe_open

    for rel in files:
        if not rel.endswith(".safetensors"):
            continue
        with safe_open(str(Path(folder) / rel), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise ValueError(
                        f"{rel}: tensor {key!r} has {bad} non-finite values; refusing to publish {folder}"
                    )


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload trained pipeline",
    allow_patterns: Sequence[str] = PIPELINE_UPLOAD_PATTERNS,
) -> Any:
    """Create (or reuse) the model repository and upload the allow-listed files of ``folder``.

    Raises ``ValueError`` before contacting the Hub if a weights file to upload holds NaN or Inf.
    """
    check_finite_weights(folder, files_to_upload(folder, allow_patterns))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message,
        allow_patterns=list(allow_patterns),
    )


def _is_hub_id(name: Any) -> bool:
    """True for ``owner/name`` strings that are not local paths (only those belong in card metadata)."""
    return isinstance(name, str) and bool(_HUB_ID.fullmatch(name)) and not os.path.exists(name)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_pipeline_card(
    *,
    model_name: str,
    dataset: dict[str, Any],
    training: dict[str, Any],
    configs: dict[str, dict],
    metrics: dict[str, Any],
    sample_grid: str | None = "samples.png",
    sample_prompts: Sequence[str] = (),
    base_model: str | None = None,
) -> str:
    """Markdown model card (with YAML metadata) for a trained ProductImagePipeline."""
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=["text-to-image", "prodimg", "gan", "denoising-diffusion-gan", "product-images"],
        datasets=[str(dataset["name"])] if _is_hub_id(dataset.get("name")) else None,
        base_model=base_model if _is_hub_id(base_model) else None,
        model_name=model_name,
    )
    lines = [
        f"# {model_name}",
        "",
        (
            "A text-to-product-image pipeline (`prodimg.ProductImagePipeline`): a frozen CLIP text encoder conditions a "
            "few-step denoising diffusion GAN generator (the EMA weights are saved)."
        ),
        "",
        "```python",
        "import torch",
        "from prodimg import ProductImagePipeline",
        "",
        f'pipe = ProductImagePipeline.from_pretrained("{model_name}")',
        'image = pipe("red striped dress", generator=torch.Generator().manual_seed(0)).images[0]',
        "```",
        "",
        "## Training data",
        "",
    ]
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in dataset.items()]
    lines += ["", "## Training", ""]
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in training.items()]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        lines += ["No validation metrics were computed in this run."]
    if sample_grid:
        lines += ["", "## Samples", ""]
        if sample_prompts:
            lines += ["Rows, top to bottom: " + "; ".join(f"`{p}`" for p in sample_prompts) + ".", ""]
        lines += [f"![samples]({sample_grid})"]
    lines += ["", "## Configuration", ""]
    for name, cfg in configs.items():
        lines += [
            f"### {name}",
            "",
            "```json",
            json.dumps(cfg, indent=2, sort_keys=True, default=str),
            "```",
            "",
        ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n")
    return str(card)


def write_model_card(folder: str | os.PathLike, content: str) -> Path:
    path = Path(folder) / "README.md"
    atomic_write_text(path, content)
    return path
