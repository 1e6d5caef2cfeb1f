"""Tests for mixture_density._data: CSV streaming, streaming moments, streamed fits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mixture_density._data import CSVChunkDataset, Moments, streaming_moments
from mixture_density.estimator import MDNRegressor
from mixture_density.nn import MixtureDensityNetwork
from mixture_density.training import fit


def _write_csv(path: Path, data: np.ndarray, names: list[str]) -> None:
    # repr() round-trips float64 exactly, so the file holds exactly ``data``.
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for row in data:
            f.write(",".join(repr(float(v)) for v in row) + "\n")


def _awkward_data(n: int, seed: int = 0) -> np.ndarray:
    """Columns of very different magnitudes; column 1's spread is tiny next to its mean, so
    the naive E[x^2] - E[x]^2 would lose most digits; column 3 is constant."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, 5)) * [1.0, 1e3, 1e-3, 0.0, 5.0] + [0.0, 1e6, -3.0, 7.5, 2.0]
    data[:, 4] += np.sin(data[:, 0])  # a target that depends on the first feature
    return data


def test_streaming_moments_match_numpy(tmp_path: Path) -> None:
    data = _awkward_data(1003)
    path = tmp_path / "d.csv"
    _write_csv(path, data, ["a", "b", "c", "k", "t"])
    ds = CSVChunkDataset(str(path), ["a", "b", "c", "k"], ["t"], chunksize=97)
    m = streaming_moments(ds)
    assert m.n == 1003
    np.testing.assert_allclose(m.mean_x, data[:, :4].mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.std_x, data[:, :4].std(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.mean_y, data[:, 4:].mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.std_y, data[:, 4:].std(0), rtol=1e-10, atol=1e-10)
    # Row by row (blocks of one) gives the same moments.
    rows = streaming_moments((r[:4], r[4:]) for r in data)
    np.testing.assert_allclose(rows.std_x, m.std_x, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="no rows"):
        streaming_moments([])


def test_streamed_statistics_over_memory_budget_equal_in_memory_path(tmp_path: Path) -> None:
    # A memory budget for one chunk of parsed rows; the file is many times larger, so the
    # statistics can only come from combining chunks.
    budget_bytes = 8 * 1024
    n_cols = 5
    chunksize = budget_bytes // (n_cols * 8)  # float64 values per chunk within the budget
    data = _awkward_data(3001)
    path = tmp_path / "big.csv"
    _write_csv(path, data, ["a", "b", "c", "k", "t"])
    assert path.stat().st_size > 10 * budget_bytes and data.nbytes > 10 * budget_bytes

    ds = CSVChunkDataset(str(path), ["a", "b", "c", "k"], ["t"], chunksize=chunksize)
    chunks = list(ds.iter_chunks())
    assert len(chunks) == math.ceil(3001 / chunksize) > 10
    assert max(x.nbytes + y.nbytes for _, x, y in chunks) <= budget_bytes
    streamed = streaming_moments(ds)

    # The in-memory path: MDNRegressor standardizes the whole arrays at once.
    est = MDNRegressor(n_components=1, hidden_dims=(4,), epochs=1, random_state=0)
    est.fit(data[:, :4], data[:, 4])
    scale_x, scale_y = streamed.scales()
    np.testing.assert_allclose(streamed.mean_x, est.x_mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scale_x, est.x_scale_, rtol=1e-10)
    np.testing.assert_allclose(streamed.mean_y, est.y_mean_, rtol=1e-12)
    np.testing.assert_allclose(scale_y, est.y_scale_, rtol=1e-10)
    assert scale_x[3] == 1.0  # the constant column is centred, not divided by ~0

    # Standardized chunks have mean 0 and unit spread (constant column: all zeros).
    scaled = CSVChunkDataset(
        str(path),
        ["a", "b", "c", "k"],
        ["t"],
        chunksize=chunksize,
        dtype=torch.float64,
        transform=streamed.standardize,
    )
    xs = torch.stack([x for x, _ in scaled]).numpy()
    np.testing.assert_allclose(xs.mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(xs.std(0), [1.0, 1.0, 1.0, 0.0], atol=1e-9)


def test_csv_dataset_rows_shards_and_errors(tmp_path: Path) -> None:
    data = np.arange(50, dtype=float).reshape(25, 2)
    path = tmp_path / "d.csv"
    _write_csv(path, data, ["x", "y"])
    ds = CSVChunkDataset(str(path), [0], ["y"], chunksize=4, shuffle=True, seed=1)
    seen = sorted(float(x) for x, _ in ds)
    assert seen == data[:, 0].tolist()
    # Two workers partition the chunks: every row exactly once.
    parts = [list(ds.iter_chunks((w, 2))) for w in range(2)]
    got = np.concatenate([x for part in parts for _, x, _ in part])[:, 0]
    assert sorted(got.tolist()) == data[:, 0].tolist()
    assert {c for part in parts for c, _, _ in part} == set(range(7))
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\nnan,3\n")
    with pytest.raises(ValueError, match="line 3"):
        list(CSVChunkDataset(str(bad), ["x"], ["y"]))
    with pytest.raises(ValueError, match="not in the header"):
        list(CSVChunkDataset(str(path), ["z"], ["y"]))
    with pytest.raises(ValueError, match="chunksize"):
        CSVChunkDataset(str(path), ["x"], ["y"], chunksize=0)


def test_moments_standardize_guards_constant_columns() -> None:
    m = Moments(3, np.array([1e6, 2.0]), np.array([1e-12, 4.0]), np.array([0.0]), np.array([2.0]))
    x, y = m.standardize(np.array([[1e6, 6.0]]), np.array([[3.0]]))
    np.testing.assert_array_equal(x, [[0.0, 1.0]])  # 1e-12 is rounding noise at 1e6: scale 1
    np.testing.assert_array_equal(y, [[1.5]])


def test_streaming_fit_on_standardized_csv_lowers_loss(tmp_path: Path) -> None:
    # Raw units far from standardized (x around 50, y around -20 with spread 3): the fit only
    # works because each chunk is standardized with the streamed moments on the way in.
    g = torch.Generator().manual_seed(0)
    n = 2000
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 4 - 2
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = torch.sin(2 * x) + (0.1 + 0.3 * x.abs()) * noise
    raw = torch.cat([50 + 10 * x, -20 + 3 * y], 1).numpy()
    path = tmp_path / "d.csv"
    _write_csv(path, raw, ["x", "y"])

    moments = streaming_moments(CSVChunkDataset(str(path), ["x"], ["y"], chunksize=256))
    ds = CSVChunkDataset(
        str(path),
        ["x"],
        ["y"],
        chunksize=256,
        shuffle=True,
        seed=0,
        dtype=torch.float64,
        transform=moments.standardize,
    )
    torch.manual_seed(0)
    model = MixtureDensityNetwork(1, 1, 3, hidden_dim=16).double()
    r = fit(model, train_data=ds, epochs=6, lr=1e-2, batch_size=64, seed=0, verbose=False)
    assert r.epochs_run == 6 and math.isnan(r.best_val_nll)
    nll = [h["train_nll"] for h in r.history]
    # Standardized y has unit variance, so a single Gaussian scores 0.5 log(2 pi e) = 1.42;
    # the conditional structure (sin with growing noise) brings the NLL well below that.
    assert nll[-1] < nll[0] - 0.2 and nll[-1] < 1.2, nll
