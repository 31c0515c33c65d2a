"""Few-step variance-preserving scheduler for denoising diffusion GANs (Xiao et al., 2022).

The forward process has ``num_train_timesteps`` = T levels (1..8). Level 0 is clean data; level
``k`` has ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps`` with ``abar`` taken from the continuous
VP-SDE with a linear beta(t) between ``beta_min`` and ``beta_max`` at ``t = k / T``.

Timestep convention (as in diffusers): a *timestep* ``t`` in ``0..T-1`` indexes the arrays below and
names the noisy level ``t + 1``. The generator sees ``(x_{t+1}, t)`` and predicts ``x_0``. ``step``
moves from the current level to the next lower level in ``self.timesteps`` by sampling the Gaussian
posterior ``q(x_s | x_t, x_0)``; with fewer inference steps than T, levels are skipped and the same
posterior formula (for non-adjacent levels) is used.

This class is the only place where the diffusion math lives: training (``add_noise``,
``sample_training_pair``, ``posterior``) and sampling (``set_timesteps``, ``step``) both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

MAX_TRAIN_TIMESTEPS = 8


@dataclass
class DDGANSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor`): the sample at the next lower noise level.
        pred_original_sample (`torch.Tensor`): the model's prediction of ``x_0``.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DDGANScheduler(SchedulerMixin, ConfigMixin):
    """Few-step VP schedule with Gaussian posterior sampling for x0-predicting GAN generators."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0):
        if not isinstance(num_train_timesteps, int) or not 1 <= num_train_timesteps <= MAX_TRAIN_TIMESTEPS:
            raise ValueError(
                f"num_train_timesteps must be an int in 1..{MAX_TRAIN_TIMESTEPS}, got {num_train_timesteps!r}"
            )
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        T = num_train_timesteps
        levels = np.arange(0, T + 1, dtype=np.float64) / T  # t in [0, 1], level 0 .. T
        log_abar = -(beta_min * levels + 0.5 * (beta_max - beta_min) * levels**2)
        abar_levels = np.exp(log_abar)  # abar_levels[0] == 1 (clean data)
        # Arrays indexed by timestep t = level - 1.
        self.alphas_cumprod = torch.from_numpy(abar_levels[1:]).float()
        self.alphas_cumprod_prev = torch.from_numpy(abar_levels[:-1]).float()
        self.alphas = self.alphas_cumprod / self.alphas_cumprod_prev
        self.betas = 1.0 - self.alphas
        self._abar_levels = torch.from_numpy(abar_levels)  # float64, for exact posterior coefficients
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(T - 1, -1, -1, dtype=torch.long)
        self._prev_timestep: dict[int, int] = {t: t - 1 for t in range(T)}

    # ------------------------------------------------------------------ sampling
    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None):
        """Choose ``num_inference_steps`` (1..T, default T) levels, always starting at level T."""
        T = self.config.num_train_timesteps
        n = T if num_inference_steps is None else num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
            raise ValueError(
                f"num_inference_steps must be an int in 1..{T} (the trained range of this scheduler), got {n!r}"
            )
        levels = np.unique(np.round(np.linspace(T, 0, n + 1)[:-1]).astype(np.int64))[::-1]
        timesteps = levels - 1
        self.num_inference_steps = n
        self.timesteps = torch.from_numpy(timesteps.copy()).to(device=device, dtype=torch.long)
        self._prev_timestep = {int(t): int(p) for t, p in zip(timesteps, list(timesteps[1:]) + [-1])}

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDGANSchedulerOutput | tuple:
        """Sample ``x_prev ~ q(x_prev | x_t = sample, x_0 = model_output)``.

        ``model_output`` is the generator's ``x_0`` prediction. ``generator`` may be a list with one
        ``torch.Generator`` per batch element (then each sample's noise depends only on its own).
        """
        t = int(timestep)
        if t not in self._prev_timestep:
            raise ValueError(f"timestep {t} is not one of the scheduler's timesteps {self.timesteps.tolist()}")
        prev_t = self._prev_timestep[t]
        x0 = model_output
        mean, var = self.posterior(x0, sample, t + 1, prev_t + 1)
        if prev_t >= 0:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = mean + var.sqrt() * noise
        else:
            prev_sample = mean
        if not return_dict:
            return (prev_sample, x0)
        return DDGANSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    # ------------------------------------------------------------------ math
    def _levels(self, level: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        abar = self._abar_levels.to(like.device)[torch.as_tensor(level, device=like.device).long()]
        abar = abar.to(torch.float32)
        while abar.dim() < like.dim():
            abar = abar.unsqueeze(-1)
        return abar

    def posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, level_t: int | torch.Tensor, level_s: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_s | x_t, x_0)`` for levels ``s < t`` (``s = 0`` gives ``x_0``)."""
        abar_t = self._levels(level_t, x_t)
        abar_s = self._levels(level_s, x_t)
        alpha_ts = abar_t / abar_s
        beta_ts = 1.0 - alpha_ts
        denom = 1.0 - abar_t
        coef_x0 = abar_s.sqrt() * beta_ts / denom
        coef_xt = alpha_ts.sqrt() * (1.0 - abar_s) / denom
        var = (beta_ts * (1.0 - abar_s) / denom).clamp(min=0.0)
        mean = coef_x0 * x0.to(x_t.dtype) + coef_xt * x_t
        return mean, var.to(x_t.dtype).expand_as(mean)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_{t+1} = sqrt(abar) x_0 + sqrt(1 - abar) noise`` for timesteps ``t`` (level ``t + 1``)."""
        self._check_train_timesteps(timesteps)
        abar = self._levels(timesteps + 1, original_samples).to(original_samples.dtype)
        return abar.sqrt() * original_samples + (1.0 - abar).sqrt() * noise

    def sample_training_pair(
        self,
        original_samples: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A real denoising pair ``(x_t, x_{t+1})`` for timesteps ``t``: ``x_t ~ q(x_t | x_0)`` (``x_0``
        itself when ``t == 0``) and ``x_{t+1} = sqrt(alpha_t) x_t + sqrt(beta_t) eps``."""
        self._check_train_timesteps(timesteps)
        x0 = original_samples
        shape, device, dtype = x0.shape, x0.device, x0.dtype
        eps1 = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        eps2 = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        abar_prev = self._levels(timesteps, x0).to(dtype)  # level t
        x_t = abar_prev.sqrt() * x0 + (1.0 - abar_prev).sqrt() * eps1
        alpha = self._levels(timesteps + 1, x0).to(dtype) / abar_prev
        x_next = alpha.sqrt() * x_t + (1.0 - alpha).sqrt() * eps2
        return x_t, x_next

    def sample_posterior(
        self,
        pred_original_sample: torch.Tensor,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """A fake pair's lower half for training: ``x_t ~ q(x_t | x_{t+1} = sample, x_0 = pred)``."""
        self._check_train_timesteps(timesteps)
        mean, var = self.posterior(pred_original_sample, sample, timesteps + 1, timesteps)
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return mean + var.sqrt() * noise

    def _check_train_timesteps(self, timesteps: torch.Tensor) -> None:
        T = self.config.num_train_timesteps
        if timesteps.numel() and (int(timesteps.min()) < 0 or int(timesteps.max()) >= T):
            raise ValueError(f"timesteps must lie in 0..{T - 1}, got {timesteps.tolist()}")

    def __len__(self) -> int:
        return self.config.num_train_timesteps
