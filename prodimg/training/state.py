"""Pickle-free serialisation of training state: tensors to safetensors, everything else to JSON.

``state_dict()`` objects of optimizers, LR schedulers, ``GradScaler``, diffusers' ``EMAModel`` and
RNG states are nested dicts / lists / tuples of tensors, numbers, strings, ``None`` and small numpy
arrays. :func:`flatten_state` splits such a structure into a flat ``{key: tensor}`` dict (written
with safetensors) and a JSON skeleton in which every tensor is replaced by a reference to its key.
:func:`unflatten_state` rebuilds the original structure, types included (tuples stay tuples,
integer dict keys stay integers). Loading never unpickles anything, so a checkpoint from an
untrusted place cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..utils import atomic_write_bytes

logger = logging.getLogger(__name__)

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_DICT = "__dict__"
_NDARRAY = "__ndarray__"
_FLOAT = "__float__"
_MARKERS = {_TENSOR, _TUPLE, _DICT, _NDARRAY, _FLOAT}


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``obj`` into ``(json_skeleton, tensors)``; see the module docstring."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            key = path or "tensor"
            if key in tensors:
                raise ValueError(f"two tensors of the state map to the same key {key!r}")
            tensors[key] = value.detach().cpu().contiguous()
            return {_TENSOR: key}
        if isinstance(value, np.ndarray):
            return {_NDARRAY: value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return walk(value.item(), path)
        if isinstance(value, float) and not np.isfinite(value):
            return {_FLOAT: repr(value)}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and k not in _MARKERS for k in value):
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
            items = []
            for k, v in value.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise TypeError(f"cannot serialise dict key {k!r} of type {type(k).__name__} at {path!r}")
                items.append([k, walk(v, f"{path}.{k}" if path else str(k))])
            return {_DICT: items}
        raise TypeError(f"cannot serialise a {type(value).__name__} at {path!r} without pickle")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            if _TENSOR in value:
                key = value[_TENSOR]
                if key not in tensors:
                    raise ValueError(
                        f"the state refers to tensor {key!r}, which is missing from the safetensors file"
                    )
                return tensors[key]
            if _TUPLE in value:
                return tuple(walk(v) for v in value[_TUPLE])
            if _DICT in value:
                return {k: walk(v) for k, v in value[_DICT]}
            if _NDARRAY in value:
                return np.asarray(value[_NDARRAY], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
            if _FLOAT in value:
                return float(value[_FLOAT])
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(skeleton)


def save_state_files(directory: str | os.PathLike, name: str, state: Any) -> list[str]:
    """Write ``state`` as ``<name>.json`` (+ ``<name>.safetensors`` if it holds tensors); return file names."""
    directory = Path(directory)
    skeleton, tensors = flatten_state(state)
    files = [f"{name}.json"]
    if tensors:
        save_file(tensors, str(directory / f"{name}.safetensors"))
        files.append(f"{name}.safetensors")
    atomic_write_bytes(directory / f"{name}.json", json.dumps(skeleton, indent=1).encode("utf-8"))
    return files


def load_state_files(directory: str | os.PathLike, name: str, device: str | torch.device = "cpu") -> Any:
    """Read what :func:`save_state_files` wrote (JSON + safetensors only, never pickle)."""
    directory = Path(directory)
    with open(directory / f"{name}.json", encoding="utf-8") as f:
        skeleton = json.load(f)
    st = directory / f"{name}.safetensors"
    tensors = load_file(str(st), device=str(device)) if st.is_file() else {}
    return unflatten_state(skeleton, tensors)


# ---------------------------------------------------------------------------------------- RNG
def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, numpy, torch (CPU and CUDA) global RNG states plus any named ``torch.Generator``s."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    state["generators"] = {name: g.get_state() for name, g in (generators or {}).items()}
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`capture_rng_state` returned (generator states are copied into ``generators``)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise ValueError(f"the checkpoint has no state for the random generator {name!r}")
        s = saved[name].cpu()
        if s.numel() != g.get_state().numel():
            # Written by a generator of another device type (a CUDA Philox state is 16 bytes, a CPU
            # Mersenne Twister state 5,056): continuing a GPU run on the CPU or the reverse. The stream
            # cannot carry over; seed this one from the saved state, so the resumed run is still a
            # deterministic function of the checkpoint.
            seed = int.from_bytes(hashlib.sha256(s.numpy().tobytes()).digest()[:8], "little")
            logger.warning(
                f"random generator {name!r}: the checkpoint's state ({s.numel()} bytes) is for another "
                f"device type than {g.device.type!r}; reseeded from it (the run continues, not bit for bit)"
            )
            g.manual_seed(seed)
            continue
        g.set_state(s)


class Deadline:
    """A training-time budget: ``expired()`` once ``seconds`` have passed since construction.

    ``clock="wall"`` counts wall-clock time; ``clock="cpu"`` counts this process's CPU time (all its
    threads), which keeps budgets comparable while other jobs share the machine. ``seconds=None``
    never expires.
    """

    CLOCKS = ("wall", "cpu")

    def __init__(self, seconds: float | None, clock: str = "wall"):
        if clock not in self.CLOCKS:
            raise ValueError(f"clock must be one of {self.CLOCKS}, got {clock!r}")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"the time budget must be a positive number of seconds, got {seconds}")
        self.seconds, self.clock = seconds, clock
        self._now = time.perf_counter if clock == "wall" else time.process_time
        self.start = self._now()

    def elapsed(self) -> float:
        return self._now() - self.start

    def expired(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds

    def expired_everywhere(self, accelerator) -> bool:
        """The main process's verdict, shared with every process (so that all stop at the same step)."""
        if self.seconds is None:
            return False
        if accelerator.num_processes == 1:
            return self.expired()
        from accelerate.utils import broadcast_object_list

        verdict = [self.expired() if accelerator.is_main_process else None]
        return bool(broadcast_object_list(verdict, from_process=0)[0])


@dataclasses.dataclass
class TrainerState:
    """Progress that is not inside a model/optimizer: step, data position, images seen."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    images_seen: int = 0
    global_batch_size: int = 0
    dataset_size: int = 0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, int(state[f.name]))


def _jsonable(value: Any) -> Any:
    """``value`` as JSON holds it (tuples as lists, anything JSON has no type for as its str)."""
    return json.loads(json.dumps(value, default=str))


class PhaseHistory:
    """The invocations of one resumable run: for each, the steps it trained and its arguments.

    A run resumed with other arguments (a new loss weight, a second objective) is one lineage of
    checkpoints made by several recipes. Each checkpoint stores the phases up to its own step, so a
    run resumed from an older checkpoint forgets what the abandoned steps after it did, as its
    weights do. ``state`` supplies the step; ``arguments`` are this invocation's.
    """

    def __init__(self, state: TrainerState, arguments: dict[str, Any]):
        self._state = state
        self.arguments = _jsonable(arguments)
        self.previous: list[dict[str, Any]] = []
        self.start_step = state.step

    def phases(self) -> list[dict[str, Any]]:
        """Every phase with steps, oldest first: ``{"from_step", "to_step", "arguments"}``; a phase from a
        checkpoint of a trainer that kept no history has ``arguments`` None."""
        current = {"from_step": self.start_step, "to_step": self._state.step, "arguments": self.arguments}
        return [p for p in [*self.previous, current] if p["to_step"] > p["from_step"]]

    def state_dict(self) -> dict:
        return {"phases": self.phases()}

    def load_state_dict(self, state: dict | None) -> None:
        """Continue after a checkpoint's phases, or after an unrecorded phase 0 -> its step when ``state`` is
        None (the checkpoint was written before the history was kept). Call after ``state`` has its step."""
        step = self._state.step
        if state is None:
            self.previous = [{"from_step": 0, "to_step": step, "arguments": None}] if step > 0 else []
        else:
            phases = state.get("phases") if isinstance(state, dict) else None
            if not isinstance(phases, list) or not all(
                isinstance(p, dict) and {"from_step", "to_step", "arguments"} <= p.keys() for p in phases
            ):
                raise ValueError(f"the checkpoint's phase history is not a list of phases: {state!r:.200}")
            self.previous = [dict(p) for p in phases]
            if self.previous and self.previous[-1]["to_step"] != step:
                raise ValueError(
                    f"the checkpoint's phase history ends at step {self.previous[-1]['to_step']}, "
                    f"its trainer state at step {step}"
                )
        self.start_step = step


def summarize_phases(
    phases: list[dict[str, Any]], reference: dict[str, Any], ignored: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """One line per phase, adjacent phases with the same arguments (bar ``ignored``) merged, each given as
    the arguments in which it differs from ``reference`` (the card's training arguments):
    ``steps 0-1200: as below but --classifier_guidance_heads category``."""

    def compared(args: dict | None) -> dict | None:
        return None if args is None else {k: v for k, v in _jsonable(args).items() if k not in ignored}

    merged: list[dict[str, Any]] = []
    for p in phases:
        args = compared(p["arguments"])
        if merged and args is not None and merged[-1]["args"] == args:
            merged[-1]["to_step"] = p["to_step"]
        else:
            merged.append({"from_step": p["from_step"], "to_step": p["to_step"], "args": args})
    ref = compared(reference)
    lines = []
    for p in merged:
        span, args = f"steps {p['from_step']}-{p['to_step']}", p["args"]
        if args is None:
            lines.append(f"{span}: not recorded (a checkpoint from a trainer that kept no history)")
        elif args == ref:
            lines.append(f"{span}: the training arguments below")
        else:
            diff = [f"--{k} {args.get(k)}" for k in sorted(set(args) | set(ref)) if args.get(k) != ref.get(k)]
            lines.append(f"{span}: as below but " + ", ".join(diff))
    return lines
