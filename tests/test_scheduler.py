"""The DDGAN scheduler's math against closed forms."""

import math

import numpy as np
import pytest
import torch

from prodimg import DDGANScheduler


def abar_closed_form(level: int, T: int, beta_min=0.1, beta_max=20.0) -> float:
    t = level / T
    return math.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t * t))


@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_alphas_cumprod_closed_form_and_monotonic(T):
    s = DDGANScheduler(num_train_timesteps=T)
    expected = [abar_closed_form(k, T) for k in range(1, T + 1)]
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), expected, rtol=1e-6)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_allclose(torch.cumprod(s.alphas, 0).numpy(), s.alphas_cumprod.numpy(), rtol=1e-5)
    assert torch.all((s.betas > 0) & (s.betas < 1))
    # The last level is (almost) pure noise.
    assert s.alphas_cumprod[-1] < 1e-4


@pytest.mark.parametrize("T", [0, 9, 2.5, "4"])
def test_bad_num_train_timesteps(T):
    with pytest.raises(ValueError, match="num_train_timesteps"):
        DDGANScheduler(num_train_timesteps=T)


def test_set_timesteps_subsets_and_range():
    s = DDGANScheduler(num_train_timesteps=4)
    expected = {1: [3], 2: [3, 1], 3: [3, 2, 0], 4: [3, 2, 1, 0]}
    for n, ts in expected.items():
        s.set_timesteps(n)
        assert s.timesteps.tolist() == ts
    s.set_timesteps()
    assert s.timesteps.tolist() == [3, 2, 1, 0]
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.set_timesteps(bad)


def test_posterior_matches_ddpm_closed_form():
    T = 4
    s = DDGANScheduler(num_train_timesteps=T)
    x0, xt = torch.randn(3, 2), torch.randn(3, 2)
    for t in range(T):
        abar, abar_prev = abar_closed_form(t + 1, T), abar_closed_form(t, T)
        alpha, beta = abar / abar_prev, 1 - abar / abar_prev
        mean, var = s.posterior(x0, xt, t + 1, t)
        exp_mean = beta * math.sqrt(abar_prev) / (1 - abar) * x0 + (1 - abar_prev) * math.sqrt(alpha) / (1 - abar) * xt
        exp_var = beta * (1 - abar_prev) / (1 - abar)
        torch.testing.assert_close(mean, exp_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, torch.full_like(var, exp_var), rtol=1e-5, atol=1e-7)


def test_posterior_empirical_moments():
    """Sampling x_t | x_0 then x_{t+1} | x_t, the conditional x_t | (x_{t+1}, x_0) has the posterior moments."""
    s = DDGANScheduler(num_train_timesteps=2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    t = torch.full((200_000,), 1)
    x_t, x_next = s.sample_training_pair(x0, t, generator=g)
    mean, var = s.posterior(x0, x_next, 2, 1)
    resid = x_t - mean
    assert abs(resid.mean().item()) < 0.01
    assert abs(resid.var().item() / var[0].item() - 1) < 0.02


def test_training_pair_marginals():
    s = DDGANScheduler(num_train_timesteps=4)
    g = torch.Generator().manual_seed(0)
    n = 100_000
    x0 = torch.full((n, 1), 0.5)
    for t in range(4):
        x_t, x_next = s.sample_training_pair(x0, torch.full((n,), t), generator=g)
        ab_t, ab_next = abar_closed_form(t, 4), abar_closed_form(t + 1, 4)
        assert abs(x_next.mean().item() - math.sqrt(ab_next) * 0.5) < 0.01
        assert abs(x_next.var().item() - (1 - ab_next)) < 0.01
        assert abs(x_t.mean().item() - math.sqrt(ab_t) * 0.5) < 0.01
    x_t, _ = s.sample_training_pair(x0[:4], torch.zeros(4, dtype=torch.long), generator=g)
    torch.testing.assert_close(x_t, x0[:4])  # level 0 is the clean image


def test_add_noise_closed_form_and_range_check():
    s = DDGANScheduler(num_train_timesteps=4)
    x0, eps = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0, 1, 2, 3])
    out = s.add_noise(x0, eps, t)
    for i in range(4):
        ab = abar_closed_form(i + 1, 4)
        torch.testing.assert_close(out[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i])
    with pytest.raises(ValueError, match="timesteps must lie"):
        s.add_noise(x0, eps, torch.tensor([0, 1, 2, 4]))


def test_step_last_is_prediction_and_T1_is_plain_gan():
    s = DDGANScheduler(num_train_timesteps=1)
    s.set_timesteps()
    x0, xT = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    out = s.step(x0, s.timesteps[0], xT)
    torch.testing.assert_close(out.prev_sample, x0)
    torch.testing.assert_close(out.pred_original_sample, x0)
    s4 = DDGANScheduler(num_train_timesteps=4)
    s4.set_timesteps(4)
    out = s4.step(x0, 0, xT)
    torch.testing.assert_close(out.prev_sample, x0)


def test_step_is_seeded_and_uses_posterior():
    s = DDGANScheduler(num_train_timesteps=4)
    s.set_timesteps(2)  # levels 4 -> 2 -> 0
    x0, x = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = s.step(x0, 3, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = s.step(x0, 3, x, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b)
    mean, var = s.posterior(x0, x, 4, 2)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, mean + var.sqrt() * noise)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        s.step(x0, 2, x)


def test_save_load_roundtrip(tmp_path):
    s = DDGANScheduler(num_train_timesteps=3, beta_max=15.0)
    s.save_pretrained(tmp_path)
    r = DDGANScheduler.from_pretrained(tmp_path)
    assert r.config.num_train_timesteps == 3 and r.config.beta_max == 15.0
    torch.testing.assert_close(r.alphas_cumprod, s.alphas_cumprod)
