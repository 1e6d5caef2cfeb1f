"""How far a 2-process (torchrun, gloo) fit drifts from the 1-process fit, epoch by epoch.

Both runs see the same data, seed, split, initial weights and global batch (128 rows); the
2-process run averages two half-batch gradients, which rounds differently from one full-batch
gradient in float32, and training amplifies that rounding. For each number of epochs the
script fits with ``mdn fit`` in one process and under ``torchrun --nproc-per-node 2``,
predicts the conditional mean of the same test rows with both models and prints the
differences, in units of y and relative to y's standard deviation.

Usage:
    python benchmarks/ddp_agreement.py                  # 40,000 rows, epochs 1 2 3 5 10
    python benchmarks/ddp_agreement.py --rows 4000 --epochs 1 2   # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mixture_density.estimator import MDNRegressor


def make_data(path: Path, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Heteroscedastic data with a target in the thousands, as in the reported case."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(rows, 4))
    y = 3000 + 800 * np.sin(X[:, 0]) + 300 * X[:, 1] * (1 + 0.5 * rng.standard_normal(rows))
    header = "x0,x1,x2,x3,y\n"
    rows = np.c_[X, y].tolist()  # Python floats: their repr is the shortest exact text
    path.write_text(header + "".join(",".join(map(repr, r)) + "\n" for r in rows))
    return X, y


def fit(data: Path, out: Path, epochs: int, processes: int) -> None:
    args = ["fit", str(data), "--target", "y", "--estimators", "1", "--epochs", str(epochs),
            "--seed", "0", "--quiet", "--out", str(out)]  # fmt: skip
    if processes == 1:
        cmd = [sys.executable, "-m", "mixture_density", *args]
    else:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--standalone", f"--nproc-per-node={processes}",
               "-m", "mixture_density", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _, y = make_data(folder / "data.csv", args.rows, args.seed)
        X_test, _ = make_data(folder / "test.csv", 2000, args.seed + 1)
        sd = float(np.std(y))
        print(f"{args.rows} rows, y in the thousands (sd {sd:.0f}); float32 MDN, 2x64, K=5")
        print(
            "| epochs | max abs diff | median abs diff | max / sd(y) | identical | "
            "val NLL, 1 process | val NLL, 2 processes |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for epochs in args.epochs:
            preds, val = [], []
            for processes in (1, 2):
                out = folder / f"m{processes}_{epochs}.pt"
                fit(folder / "data.csv", out, epochs, processes)
                model = MDNRegressor.load(out)
                preds.append(model.predict(X_test))
                val.append(model.val_nll_)
            diff = np.abs(preds[0] - preds[1])
            print(
                f"| {epochs} | {diff.max():.3g} | {np.median(diff):.3g} | "
                f"{diff.max() / sd:.2g} | {np.mean(diff == 0):.0%} | {val[0]:.4f} | {val[1]:.4f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
