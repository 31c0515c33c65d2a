"""Mixed precision and the numerics guard, for any number of optimizers stepped one after another.

``MixedPrecision`` owns the autocast context and (fp16 only) a ``torch.amp.GradScaler``. It is used
on every device instead of accelerate's own scaler because (a) accelerate silently runs fp16 as fp32
on CPU, and (b) each optimizer here finishes its own scale -> unscale -> check -> step -> update
cycle, so one scaler serves a generator and a discriminator stepped in turn.

:func:`guarded_step` is the only place an optimizer steps: it unscales, checks that the loss and
every gradient are finite on *all* processes (one small gather), and either steps or skips. A skip
caused by fp16 overflow (finite loss, infinite scaled gradients) is normal loss-scale calibration
and is reported as ``overflow``; any other non-finite loss or gradient is ``nonfinite`` and counts
toward :class:`NonFiniteGuard`'s limit of consecutive bad steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

PRECISIONS = ("no", "fp16", "bf16")


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class MixedPrecision:
    def __init__(self, mode: str, device: torch.device):
        if mode not in PRECISIONS:
            raise ValueError(f"--mixed_precision must be one of {PRECISIONS}, got {mode!r}")
        self.mode = mode
        self.device = torch.device(device)
        self.dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mode]
        self.scaler = torch.amp.GradScaler(self.device.type) if mode == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def state_dict(self) -> dict:
        return {"mode": self.mode, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


@dataclass
class StepResult:
    stepped: bool
    nonfinite: bool = False
    overflow: bool = False
    grad_norm: float | None = None


def _all_processes(flags: torch.Tensor, accelerator) -> torch.Tensor:
    """Logical AND of boolean ``flags`` over processes."""
    if accelerator is None or accelerator.num_processes == 1:
        return flags
    return accelerator.gather(flags.to(torch.int32).unsqueeze(0)).bool().all(dim=0)


def guarded_step(
    optimizer,
    parameters: Iterable[torch.nn.Parameter],
    loss_finite: torch.Tensor | bool,
    precision: MixedPrecision,
    accelerator=None,
    max_grad_norm: float | None = None,
) -> StepResult:
    """Step ``optimizer`` if the loss and the gradients are finite everywhere, else skip and zero the grads."""
    params = [p for p in parameters if p.grad is not None]
    scaler = precision.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    device = params[0].device if params else precision.device
    # One fused reduction per optimizer: a NaN/inf anywhere makes its tensor's norm non-finite.
    grads_finite = (
        torch.isfinite(torch.stack(torch._foreach_norm([p.grad for p in params]))).all()
        if params
        else torch.tensor(True, device=device)
    )
    flags = torch.stack(
        [torch.as_tensor(loss_finite, device=device).reshape(()).bool(), grads_finite.to(device)]
    )
    loss_ok, grads_ok = (bool(v) for v in _all_processes(flags, accelerator).tolist())
    if loss_ok and grads_ok:
        norm = None
        if max_grad_norm:
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return StepResult(stepped=True, grad_norm=norm)
    if scaler is not None:
        scaler.update()  # backs off the scale when the unscale found inf/nan; resets per-optimizer state
    optimizer.zero_grad(set_to_none=True)
    overflow = scaler is not None and loss_ok
    return StepResult(stepped=False, nonfinite=not overflow, overflow=overflow)


class NonFiniteGuard:
    """Counts skipped steps; raises after ``max_consecutive`` consecutive non-finite ones."""

    def __init__(self, max_consecutive: int):
        if max_consecutive < 1:
            raise ValueError(f"--max_nonfinite_steps must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total_nonfinite = 0
        self.total_overflow = 0

    def update(self, step: int, *results: StepResult, last_checkpoint: str | None = None) -> bool:
        """Record one training step's phase results; return True if the step was non-finite."""
        bad = any(r.nonfinite for r in results)
        self.total_overflow += sum(r.overflow for r in results)
        if bad:
            self.consecutive += 1
            self.total_nonfinite += 1
            if self.consecutive >= self.max_consecutive:
                where = (
                    f"the last good checkpoint is {last_checkpoint}"
                    if last_checkpoint
                    else "no checkpoint was written"
                )
                raise NonFiniteTrainingError(
                    f"stopping at step {step}: {self.consecutive} consecutive steps had a non-finite loss or gradient "
                    f"(--max_nonfinite_steps {self.max_consecutive}); {where}. Lower the learning rate, raise "
                    "--r1_gamma, or use --mixed_precision no/bf16."
                )
        else:
            self.consecutive = 0
        return bad

    def state_dict(self) -> dict:
        return {
            "consecutive": self.consecutive,
            "total_nonfinite": self.total_nonfinite,
            "total_overflow": self.total_overflow,
        }

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state["consecutive"])
        self.total_nonfinite = int(state["total_nonfinite"])
        self.total_overflow = int(state["total_overflow"])
