"""Correctness of the library on a CUDA device against the same computation on the CPU.

Run on a machine with a GPU (skips cleanly without one)::

    python benchmarks/gpu_check.py

Each row computes one quantity on ``cuda`` and on ``cpu`` in float64 from the same parameters
and prints the largest absolute difference; ``ok`` means it is below the stated tolerance.
It covers the density kernels of all three parameterizations (including the fused
custom-autograd paths and their gradients), sampling (device and moments), ``mode``,
``cdf``/``icdf``, ``condition``, ``marginal``, the head for all five noise models, a bf16
autocast forward, and a short ``MDNRegressor`` fit with ``device=DEV``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from mixture_density import GaussianMixture, MDNRegressor, MixtureDensityNetwork

# GPU_CHECK_DEVICE=cpu dry-runs the script on a machine without a GPU (CPU against CPU).
DEV = os.environ.get("GPU_CHECK_DEVICE", "cuda")
TOL = 1e-9  # float64 on two devices: only summation order differs
# ROWS: (check, error, tolerance); for GPU-only rows the error is the statistic shown.
ROWS: list[tuple[str, float, float]] = []


def check(name: str, fn: Callable[[torch.device], torch.Tensor], tol: float = TOL) -> None:
    cpu = fn(torch.device("cpu"))
    gpu = fn(torch.device(DEV))
    assert gpu.device.type == DEV, f"{name}: result left the GPU ({gpu.device})"
    err = float((gpu.cpu() - cpu).abs().max())
    ROWS.append((name, err, tol))


def params(parameterization: str, dev: torch.device, d: int = 3, k: int = 4) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    b = 64
    logits = torch.randn(b, k, generator=g, dtype=torch.float64)
    loc = torch.randn(b, k, d, generator=g, dtype=torch.float64)
    if parameterization == "scale":
        f = torch.rand(b, k, d, generator=g, dtype=torch.float64) + 0.2
        return GaussianMixture(logits.to(dev), loc.to(dev), scale=f.to(dev))
    a = torch.randn(b, k, d, d, generator=g, dtype=torch.float64) * 0.3
    tril = torch.tril(a, -1) + torch.diag_embed(torch.rand(b, k, d, generator=g) + 0.5).double()
    if parameterization == "scale_tril":
        return GaussianMixture(logits.to(dev), loc.to(dev), scale_tril=tril.to(dev))
    return GaussianMixture(logits.to(dev), loc.to(dev), precision_tril=tril.to(dev))


def main() -> int:
    if DEV == "cuda" and not torch.cuda.is_available():
        print("gpu_check: skipped, torch.cuda.is_available() is False")
        return 0
    name = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu (dry run)"
    print(f"device: {name}; torch {torch.__version__}")
    y = torch.randn(5, 64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    for p in ("scale", "scale_tril", "precision_tril"):
        check(f"log_prob [{p}]", lambda dev, p=p: params(p, dev).log_prob(y.to(dev)))

        def grads(dev: torch.device, p: str = p) -> torch.Tensor:
            gm = params(p, dev)
            leaves = [t.detach().requires_grad_() for t in (gm.logits, gm.loc)]
            factor = gm.scale if p == "scale" else getattr(gm, p)
            leaves.append(factor.detach().requires_grad_())
            kw = {p: leaves[2]}
            GaussianMixture(leaves[0], leaves[1], **kw).log_prob(y.to(dev)).sum().backward()
            return torch.cat([t.grad.flatten() for t in leaves])  # type: ignore[union-attr]

        check(f"log_prob gradients [{p}]", grads)
        check(f"mean, covariance [{p}]", lambda dev, p=p: params(p, dev).covariance_matrix)
        check(f"mode [{p}]", lambda dev, p=p: params(p, dev).mode, tol=1e-6)
        check(
            f"condition [{p}]",
            lambda dev, p=p: (
                params(p, dev).condition([0], y[0, :, :1].to(dev)).log_prob(y[:, :, 1:].to(dev))
            ),
        )
        check(
            f"marginal cdf/icdf [{p}]",
            lambda dev, p=p: params(p, dev).marginal([1]).icdf(torch.full((64,), 0.3, device=dev)),
            tol=1e-6,
        )

        # Draws differ between devices, so sampling is checked on the GPU alone: the sample
        # mean within 5 standard errors of the exact mean (n = 20000).
        gm = params(p, torch.device(DEV))
        s_ = gm.sample((20000,))
        z = ((s_.mean(0) - gm.mean).abs() / (gm.stddev / 20000**0.5)).max()
        ok_device = s_.device.type == DEV
        ROWS.append(
            (f"sample on cuda: max |mean error| in SEs [{p}]", float(z) if ok_device else 1e9, 5.0)
        )

    for noise in ("full", "diagonal", "isotropic", "isotropic_across_clusters", "fixed"):

        def head(dev: torch.device, noise: str = noise) -> torch.Tensor:
            torch.manual_seed(0)
            level = 0.3 if noise == "fixed" else None
            net = MixtureDensityNetwork(4, 3, 5, noise_type=noise, fixed_noise_level=level)
            net = net.double().to(dev)
            x = torch.randn(32, 4, generator=torch.Generator().manual_seed(2)).double().to(dev)
            loss = net.loss(x, torch.ones(32, 3, dtype=torch.float64, device=dev)).mean()
            loss.backward()
            g = torch.cat([q.grad.flatten() for q in net.parameters() if q.grad is not None])
            return torch.cat([loss.detach().reshape(1), g])

        check(f"network loss + gradients [{noise}]", head)

    # bf16 autocast of the backbone: only finiteness and closeness to fp32 (no CPU reference).
    net = MixtureDensityNetwork(4, 2, 5).to(DEV)
    x = torch.randn(256, 4, device=DEV)
    y2 = torch.randn(256, 2, device=DEV)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        h = net.backbone(x)
    nll16 = -net.head(h.float()).log_prob(y2).mean()
    nll32 = net.loss(x, y2).mean()
    ROWS.append(("bf16 backbone vs fp32 (|dNLL|)", float((nll16 - nll32).abs().detach()), 5e-2))

    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(1000, 2))
    t = np.sin(3 * X[:, 0]) + 0.1 * rng.standard_normal(1000)
    t0 = time.perf_counter()
    reg = MDNRegressor(n_components=3, epochs=10, device=DEV, random_state=0).fit(X, t)
    seconds = time.perf_counter() - t0
    lp = reg.log_prob(X[:100], t[:100])
    finite = bool(np.isfinite(lp).all())
    ROWS.append(
        (f"MDNRegressor cuda fit ({seconds:.1f} s): log_prob not finite", float(not finite), 0.5)
    )

    width = max(len(r[0]) for r in ROWS)
    print(f"{'check':<{width}}  {'max |gpu - cpu|':>16}  {'tolerance':>9}  result")
    failed = 0
    for name, err, tol in ROWS:
        ok = err <= tol
        failed += not ok
        print(f"{name:<{width}}  {err:>16.3e}  {tol:>9.0e}  {'ok' if ok else 'FAIL'}")
    print(f"{len(ROWS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
