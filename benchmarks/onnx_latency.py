"""Prediction latency of an exported model: onnxruntime against torch, side by side.

For a fitted ``MDNRegressor`` with the default architecture (5 networks of 2x64 ReLU, K = 5
components each: one mixture of 25) on 8 features, diagonal with D = 1 and full covariance
with D = 3, the script measures, in one process and one thread, the median wall time of one
call that returns the mixture for a batch of 1, 64, 1024 and 4096 rows:

* ``predict_distribution``: ``MDNRegressor.predict_distribution(X)`` in torch eager mode
  (input checks, standardization, five networks, the combined ``GaussianMixture`` in original
  units, its factors derived lazily);
* ``torch graph``: the module that is exported (``MixtureOutputs(MixtureParameters(est))``)
  run eagerly under ``torch.no_grad()``: the same tensors as the ONNX graph;
* ``onnxruntime``: ``InferenceSession.run`` on the file ``to_onnx`` wrote (CPU provider, one
  intra-op thread, graph optimizations on).

It also prints the agreement: the largest difference between the log-densities rebuilt from
onnxruntime's outputs and ``MDNRegressor.log_prob`` on held-out rows.

Needs the extra ``onnx`` (onnx, onnxscript, onnxruntime) and scikit-learn.

Usage:
    python benchmarks/onnx_latency.py            # the table in RESULTS.md
    python benchmarks/onnx_latency.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mixture_density import GaussianMixture, MDNRegressor
from mixture_density._onnx import MixtureOutputs, MixtureParameters


def median_seconds(fn: Callable[[], object], repeat: int, min_time: float) -> float:
    """Median over ``repeat`` rounds of the mean time of a call (rounds of >= min_time s)."""
    fn()  # warm-up
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start >= min_time:
            break
        calls *= 2
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def data(n: int, D: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)) * np.arange(1, 9) + np.arange(8)
    base = np.tanh(X[:, 0]) + 0.1 * X[:, 1] + 0.3 * rng.normal(size=n)
    Y = np.stack([(d + 1) * base + 0.2 * rng.normal(size=n) for d in range(D)], 1)
    return X, Y * 3.0 + 10.0


def measure(
    est: MDNRegressor, module: torch.nn.Module, session: object, X: np.ndarray, *timing: float
) -> tuple[float, float, float]:
    """Seconds per call: predict_distribution, the exported module in torch, onnxruntime."""
    x32 = X.astype(np.float32)
    xt = torch.as_tensor(x32)

    def run_torch() -> object:
        with torch.no_grad():
            return module(xt)

    repeat, min_time = int(timing[0]), timing[1]
    return (
        median_seconds(lambda: est.predict_distribution(X), repeat, min_time),
        median_seconds(run_torch, repeat, min_time),
        median_seconds(lambda: session.run(None, {"x": x32}), repeat, min_time),  # type: ignore[attr-defined]
    )


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeat, min_time = (3, 0.02) if args.quick else (7, 0.2)
    batches = (1, 64) if args.quick else (1, 64, 1024, 4096)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, one thread")
    print(
        "\n| noise | D | batch | predict_distribution ms | torch graph ms | onnxruntime ms "
        "| predict_distribution / ort | torch graph / ort |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    agreement = []
    with tempfile.TemporaryDirectory() as tmp:
        for noise, D in (("diagonal", 1), ("full", 3)):
            X, Y = data(2000, D, 0)
            est = MDNRegressor(noise_type=noise, epochs=3 if args.quick else 20, random_state=0)
            est.fit(X, Y[:, 0] if D == 1 else Y)
            path = Path(tmp) / f"{noise}.onnx"
            est.to_onnx(path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            module = MixtureOutputs(MixtureParameters(est)).eval()
            for batch in batches:
                times = measure(est, module, session, data(batch, D, 1)[0], repeat, min_time)
                ms = " | ".join(f"{1e3 * t:.3f}" for t in times)
                ratios = f"{times[0] / times[2]:.2f}x | {times[1] / times[2]:.2f}x"
                print(f"| {noise} | {D} | {batch} | {ms} | {ratios} |")
            Xh, Yh = data(1000, D, 2)
            out = session.run(None, {"x": Xh.astype(np.float32)})
            t = [torch.as_tensor(o, dtype=torch.float64) for o in out]
            spread = "scale_tril" if noise == "full" else "scale"
            lp = GaussianMixture(t[0], t[1], **{spread: t[2]}).log_prob(
                torch.as_tensor(Yh, dtype=torch.float64)
            )
            ref = est.log_prob(Xh, Yh[:, 0] if D == 1 else Yh)
            agreement.append((noise, D, float(np.abs(lp.numpy() - ref).max())))
    print("\nmax |log p (onnxruntime) - MDNRegressor.log_prob| over 1000 held-out rows:")
    for noise, D, diff in agreement:
        print(f"  {noise}, D={D}, 5 networks x K=5: {diff:.2e} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
