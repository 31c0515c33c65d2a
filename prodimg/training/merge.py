"""Weight-space interpolation of two generators of one lineage (WiSE-FT, Wortsman et al., 2022).

A fine-tune that improves the training distribution can lose some of what its starting point did
well off it; for the default pipeline, a batch-1024 fine-tune drew patterns far better but lost
category accuracy on the held-out colour/category pairs. Averaging the weights of the fine-tune and
its start, ``(1 - alpha) * base + alpha * tuned``, can keep part of each when the two share an
initialisation (the fine-tune started from ``base``), so that both lie in one low-loss basin. For the
default pipeline it kept the fine-tune's FID gain and the start's held-out-pair category accuracy, but
gave back most of the fine-tune's pattern gain; evaluate before shipping a merge.

    python -m prodimg.training.merge runs/x/gan-ft runs/x/gan-ft2 --alpha 0.5 --out runs/x/gan-merged

The output is ``tuned``'s folder (pipeline or bare generator) with the generator's weights replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

WEIGHTS = "diffusion_pytorch_model.safetensors"


def interpolate_state_dicts(
    base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` per floating-point tensor, computed in float32 and stored in
    ``tuned``'s dtype; other tensors are taken from ``tuned``. The two must have the same keys and shapes."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    missing, extra = sorted(set(tuned) - set(base)), sorted(set(base) - set(tuned))
    if missing or extra:
        raise ValueError(
            f"the generators differ in their weights: only in tuned {missing[:5]}, only in base {extra[:5]}"
        )
    out = {}
    for key, t in tuned.items():
        b = base[key]
        if b.shape != t.shape:
            raise ValueError(f"{key}: shape {tuple(b.shape)} in base, {tuple(t.shape)} in tuned")
        if t.is_floating_point():
            out[key] = torch.lerp(b.float(), t.float(), alpha).to(t.dtype)
        else:
            out[key] = t.clone()
    return out


def _generator_dir(folder: Path) -> Path:
    for candidate in (folder / "generator", folder):
        if (candidate / WEIGHTS).is_file() and (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: neither a pipeline with generator/{WEIGHTS} nor a generator folder")


def merge_generators(base: str | Path, tuned: str | Path, alpha: float, out: str | Path) -> Path:
    """Write ``tuned``'s folder to ``out`` (atomically) with its generator interpolated towards ``base``."""
    from safetensors.torch import load_file, save_file

    from ..utils import atomic_directory

    base_dir, tuned_dir = _generator_dir(Path(base)), _generator_dir(Path(tuned))
    ignore = {"_name_or_path", "_diffusers_version"}
    configs = [
        {k: v for k, v in json.loads((d / "config.json").read_text()).items() if k not in ignore}
        for d in (base_dir, tuned_dir)
    ]
    if configs[0] != configs[1]:
        diff = sorted(k for k in set(configs[0]) | set(configs[1]) if configs[0].get(k) != configs[1].get(k))
        raise ValueError(
            f"the generators have different configs ({', '.join(diff)}): {base_dir} vs {tuned_dir}"
        )
    merged = interpolate_state_dicts(load_file(base_dir / WEIGHTS), load_file(tuned_dir / WEIGHTS), alpha)
    out = Path(out)
    with atomic_directory(out, overwrite=True) as tmp:
        # the folder without the trainer's checkpoints (they hold the unmerged weights)
        shutil.copytree(Path(tuned), tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint-*"))
        rel = tuned_dir.relative_to(Path(tuned))
        save_file(merged, str(tmp / rel / WEIGHTS), metadata={"format": "pt"})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the pipeline (or generator folder) the fine-tune started from")
    parser.add_argument("tuned", help="the fine-tuned pipeline (or generator folder); its folder is copied")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of tuned (default 0.5)")
    parser.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    try:
        out = merge_generators(args.base, args.tuned, args.alpha, args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"prodimg.training.merge: error: {err}", file=sys.stderr)
        return 2
    print("saved", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
