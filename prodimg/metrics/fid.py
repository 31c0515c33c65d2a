"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) on Inception pool features.

FID: ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``. The trace of the matrix square
root is computed from eigenvalues, not with ``scipy.linalg.sqrtm``: with ``A = S1^{1/2}``
(symmetric, from ``eigh``), ``S1 S2`` is similar to ``A S2 A``, which is symmetric PSD, so
``tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A S2 A))``. Everything is float64 ``eigh`` on symmetric
matrices: no complex parts, no ``disp`` failures on singular covariances (fewer images than
2048 dimensions), and eigenvalues that round below zero are clipped. Tests check it against
``scipy.linalg.sqrtm`` and a closed form.

KID: unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged
over ``num_subsets`` random subsets of ``subset_size`` images drawn without replacement from each
set (the KID paper's protocol, 100 subsets of 1000 as in clean-fid / StyleGAN). Reported as the
mean and standard deviation over subsets.
"""

from __future__ import annotations

import numpy as np

from . import Metric, register_metric
from .context import EvalContext, feature_statistics


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh (negative round-off eigenvalues clipped to 0)."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    if not (
        np.isfinite(mu1).all()
        and np.isfinite(mu2).all()
        and np.isfinite(sigma1).all()
        and np.isfinite(sigma2).all()
    ):
        raise ValueError("the feature statistics contain NaN or inf")
    # Symmetrise: np.cov is symmetric up to round-off, eigh reads one triangle only.
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2
    root1 = _sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between two feature sets: (mean, std) of the unbiased MMD^2 over random subsets.

    ``subset_size`` is capped by the smaller set; at least 2 samples per set are needed.
    """
    # Gram matrices in float32 (as StyleGAN / clean-fid), kernel values and sums in float64.
    x_all = np.asarray(features1, np.float32)
    y_all = np.asarray(features2, np.float32)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {x_all.shape} and {y_all.shape}")
    if num_subsets < 1:
        raise ValueError(f"`num_subsets` must be >= 1, got {num_subsets}")
    m = min(len(x_all), len(y_all), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set and `subset_size` >= 2, got m={m}")
    d = x_all.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        kxx = ((x @ x.T).astype(np.float64) / d + 1.0) ** 3
        kyy = ((y @ y.T).astype(np.float64) / d + 1.0) ** 3
        kxy = ((x @ y.T).astype(np.float64) / d + 1.0) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std())


@register_metric("fid")
class FID(Metric):
    """Frechet Inception Distance between generated and real images. Returns ``{"fid"}``."""

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        # Real first: a cache problem surfaces before the (expensive) generated features.
        mu_r, sigma_r = ctx.inception_statistics("real")
        mu_g, sigma_g = ctx.inception_statistics("generated")
        return {"fid": frechet_distance(mu_g, sigma_g, mu_r, sigma_r)}


@register_metric("kid")
class KID(Metric):
    """Kernel Inception Distance. Returns ``{"kid", "kid_std"}`` (often reported x1000)."""

    def __init__(self, num_subsets: int = 100, subset_size: int = 1000):
        self.num_subsets = num_subsets
        self.subset_size = subset_size

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        real = ctx.inception_features("real")
        mean, std = kernel_inception_distance(
            ctx.inception_features("generated"),
            real,
            num_subsets=self.num_subsets,
            subset_size=self.subset_size,
            seed=ctx.seed,
        )
        return {"kid": mean, "kid_std": std}
