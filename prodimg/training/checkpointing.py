"""Atomic, resumable, pruned training checkpoints (generic: any models, any stateful objects).

Layout of ``<output_dir>/checkpoint-<step>/``::

    <model name>/model.safetensors + config.json   one folder per model (save_model: shared tensors ok)
    <state name>.json [+ .safetensors]             optimizers, LR schedulers, EMA, scaler, trainer state
    rng_state_rank<r>.json + .safetensors          per-process RNG states
    checkpoint_complete.json                       completeness marker, written last

Writing (all processes call :func:`save_checkpoint`): the main process creates
``.checkpoint-<step>.incomplete``; every process writes its RNG state into it; the main process writes
the models and states, fsyncs every file, writes the marker (listing each file and its size),
renames the folder to ``checkpoint-<step>`` and fsyncs the parent. Only then are old checkpoints
pruned to ``total_limit``: a crash at any point leaves the previous complete checkpoint loadable.

Reading: a folder counts as a checkpoint only if its marker exists and every listed file has the
listed size. ``resume_from_checkpoint="latest"`` takes the newest complete one and logs the
incomplete ones it skipped; an explicit path that is missing or incomplete is an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from ..utils import atomic_write_text, fsync_dir, fsync_tree
from .state import load_state_files, save_state_files

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_FORMAT = "prodimg-checkpoint-v1"
_NAME = re.compile(rf"{CHECKPOINT_PREFIX}-(\d+)")
# Test-only hook: "<seconds>" or "<step>:<seconds>" sleeps inside the write, before the marker.
SLEEP_ENV = "PRODIMG_TEST_CHECKPOINT_SLEEP"


class IncompleteCheckpointError(ValueError):
    """A checkpoint folder lacks its completeness marker or some of its files."""


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}-{int(step)}"


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """``None`` if ``path`` is a complete checkpoint, else a short reason why it is not."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return f"no {COMPLETE_MARKER} (the write did not finish)"
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = info["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {COMPLETE_MARKER} ({err})"
    if info.get("format") != CHECKPOINT_FORMAT:
        return f"unknown checkpoint format {info.get('format')!r}"
    for rel, size in files.items():
        f = path / rel
        if not f.is_file():
            return f"missing file {rel}"
        if f.stat().st_size != size:
            return f"file {rel} has {f.stat().st_size} bytes, expected {size}"
    return None


def checkpoint_step(path: str | os.PathLike) -> int:
    info = json.loads((Path(path) / COMPLETE_MARKER).read_text(encoding="utf-8"))
    return int(info["step"])


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """All ``checkpoint-<step>`` folders (complete or not), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def complete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    return [(s, p) for s, p in list_checkpoints(output_dir) if checkpoint_problem(p) is None]


def resolve_resume_checkpoint(
    resume_from_checkpoint: str | None, output_dir: str | os.PathLike
) -> Path | None:
    """Which checkpoint to resume from, or ``None`` for a fresh run.

    ``"latest"``: the newest complete checkpoint in ``output_dir`` (incomplete ones are skipped with
    a warning; none at all starts a fresh run, said in the log). Anything else is a path (or a
    folder name inside ``output_dir``) that must exist and be complete.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        for step, path in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(path)
            if problem is None:
                logger.info(f"Resuming from checkpoint {path} (latest complete, step {step})")
                return path
            logger.warning(f"Skipping incomplete checkpoint {path}: {problem}")
        logger.info(f"No complete checkpoint in {output_dir}; starting a new training run")
        return None
    path = Path(resume_from_checkpoint)
    if not path.exists() and not path.is_absolute() and (Path(output_dir) / path).exists():
        path = Path(output_dir) / path
    if not path.exists():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist (nor inside {output_dir}); "
            "pass an existing checkpoint folder or 'latest'"
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise IncompleteCheckpointError(
            f"--resume_from_checkpoint {str(path)!r} is not a complete checkpoint: {problem}"
        )
    logger.info(f"Resuming from checkpoint {path} (step {checkpoint_step(path)})")
    return path


# ---------------------------------------------------------------------------------------- models
def save_module(directory: str | os.PathLike, module: torch.nn.Module) -> None:
    """``model.safetensors`` (shared tensors handled) and, if the module has one, its ``config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(module, str(directory / "model.safetensors"))
    if hasattr(module, "save_config"):  # diffusers ConfigMixin
        module.save_config(directory)
    elif hasattr(getattr(module, "config", None), "to_json_file"):  # transformers PretrainedConfig
        module.config.to_json_file(str(directory / "config.json"))


def load_module(directory: str | os.PathLike, module: torch.nn.Module) -> None:
    """Load weights written by :func:`save_module` into ``module`` (strict, safetensors only)."""
    missing, unexpected = load_model(module, str(Path(directory) / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights in {directory} do not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


# ---------------------------------------------------------------------------------------- writing
def _test_sleep(step: int) -> None:
    value = os.environ.get(SLEEP_ENV)
    if not value:
        return
    at, _, seconds = value.rpartition(":")
    if not at or int(at) == step:
        time.sleep(float(seconds))


def _remove_tree(path: Path) -> None:
    """Delete a checkpoint so that it never looks complete half-way: marker first, then rename, then files."""
    try:
        (path / COMPLETE_MARKER).unlink()
    except FileNotFoundError:
        pass
    trash = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None, keep: Path) -> list[Path]:
    """Delete complete checkpoints beyond ``total_limit`` (never ``keep``) and stale temporary folders."""
    root = Path(output_dir)
    removed = []
    for p in root.glob(f".{CHECKPOINT_PREFIX}-*"):
        if p.is_dir() and (p.name.endswith(".incomplete") or p.name.endswith(".deleting")):
            shutil.rmtree(p, ignore_errors=True)
    if total_limit is None or total_limit <= 0:
        return removed
    others = [p for _, p in complete_checkpoints(root) if p.resolve() != keep.resolve()]
    excess = len(others) - (total_limit - 1)
    for p in others[: max(excess, 0)]:
        logger.info(f"Removing old checkpoint {p} (--checkpoints_total_limit {total_limit})")
        _remove_tree(p)
        removed.append(p)
    return removed


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    models: dict[str, torch.nn.Module],
    states: dict[str, Any],
    rng_state: Callable[[], dict],
    total_limit: int | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically; every process must call this.

    ``models``: unwrapped modules (written by the main process). ``states``: objects with
    ``state_dict()`` (or plain dicts), written by the main process. ``rng_state``: called on every
    process; its result is written as ``rng_state_rank<r>``.
    """
    root = Path(output_dir)
    final = root / checkpoint_name(step)
    tmp = root / f".{checkpoint_name(step)}.incomplete"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    save_state_files(tmp, f"rng_state_rank{accelerator.process_index}", rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, module in models.items():
            save_module(tmp / name, module)
        for name, obj in states.items():
            save_state_files(tmp, name, obj.state_dict() if hasattr(obj, "state_dict") else obj)
        _test_sleep(step)
        fsync_tree(tmp)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        marker = {
            "format": CHECKPOINT_FORMAT,
            "step": int(step),
            "num_processes": accelerator.num_processes,
            "models": sorted(models),
            "states": sorted(states),
            "metadata": metadata or {},
            "files": files,
        }
        atomic_write_text(tmp / COMPLETE_MARKER, json.dumps(marker, indent=1))
        if final.exists():
            _remove_tree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        prune_checkpoints(root, total_limit, keep=final)
        logger.info(f"Saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------- reading
def load_checkpoint(
    path: str | os.PathLike,
    models: dict[str, torch.nn.Module],
    states: dict[str, Any],
    process_index: int = 0,
    device: str | torch.device = "cpu",
    optional: Collection[str] = (),
) -> tuple[dict | None, dict]:
    """Load a complete checkpoint into ``models`` and ``states`` (objects with ``load_state_dict``).

    ``states`` values that are ``None`` are read and returned instead of loaded. States named in
    ``optional`` may be missing (a checkpoint written before the trainer kept them): they are then
    skipped, or returned as ``None`` when read raw. Returns ``(rng_state or None, {name: raw state for
    the None entries})``; the RNG state is ``None`` when the checkpoint was written by fewer processes
    (the caller then reseeds).
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise IncompleteCheckpointError(f"{path} is not a complete checkpoint: {problem}")
    for name, module in models.items():
        load_module(path / name, module)
    raw = {}
    for name, obj in states.items():
        if not (path / f"{name}.json").is_file():
            if name in optional:
                if obj is None:
                    raw[name] = None
                continue
            raise ValueError(f"checkpoint {path} has no state {name!r}")
        state = load_state_files(path, name, device="cpu")
        if obj is None:
            raw[name] = state
        else:
            obj.load_state_dict(state)
    rng_name = f"rng_state_rank{process_index}"
    rng = load_state_files(path, rng_name) if (path / f"{rng_name}.json").is_file() else None
    return rng, raw
