"""Tests for ``mdn fit`` at scale: under ``torchrun`` and streamed from disk (``_streaming``)."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from mixture_density._streaming import fit_streamed, scan_csv
from mixture_density.cli import main
from mixture_density.estimator import MDNRegressor

FAST = ["--epochs", "5", "--hidden", "8", "--components", "2"]
# The estimator the CLI builds from FAST (plus --seed 0, its default).
FAST_PARAMS = {"n_components": 2, "hidden_dims": (8,), "n_estimators": 1, "epochs": 5}
needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed/gloo"
)


def write_data(path: Path, n: int, *, constant: bool = False) -> Path:
    """``x1, x2[, x3 = 5], y`` with ``y = sin(x1) + 0.1 eps``, full float64 precision."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    y = np.sin(x1) + 0.1 * rng.normal(size=n)
    columns, names = [x1, x2], ["x1", "x2"]
    if constant:  # a constant column: the scale-1 rule must agree between the two paths
        columns, names = [*columns, np.full(n, 5.0)], [*names, "x3"]
    np.savetxt(path, np.column_stack([*columns, y]), delimiter=",",
               header=",".join([*names, "y"]), comments="", fmt="%.17g")  # fmt: skip
    return path


def load_xy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    return data[:, :-1], data[:, -1]


def env(**extra: str) -> dict[str, str]:
    # One thread per process (the machine is shared); a short collective timeout so that
    # nothing can hang for long.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MIXTURE_DENSITY_DIST_TIMEOUT": "30", **extra}


def torchrun(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], dict[int, str]]:
    """Runs ``torchrun --nproc-per-node 2 ARGS``; returns the process and rank -> stdout+stderr."""
    logs = cwd / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "--log-dir", str(logs), "--redirects", "3", *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=180)
    out: dict[int, str] = {}
    for name in ("stdout", "stderr"):
        for p in glob.glob(str(logs / "**" / f"{name}.log"), recursive=True):
            rank = int(Path(p).parent.name)
            out[rank] = out.get(rank, "") + f"--- {name}\n" + Path(p).read_text()
    return proc, out


# ------------------------------------------------------------------------------ torchrun


# The console script installed next to the interpreter running the tests (.venv/bin/mdn).
MDN = Path(sys.executable).with_name("mdn")


@needs_gloo
@pytest.mark.parametrize(
    "program",
    [["-m", "mixture_density"], pytest.param([str(MDN)], marks=pytest.mark.slow, id="script")],
    ids=["module", "script"],
)
def test_torchrun_two_ranks_rank0_writes_one_model(tmp_path: Path, program: list[str]) -> None:
    # 400 rows: 40 validation, 360 training rows = batches of 128, 128, 104, each split
    # evenly over the 2 ranks, so DDP averages the same gradients as one process (no padding).
    data = write_data(tmp_path / "tiny.csv", 400)
    proc, logs = torchrun(*program, "fit", "tiny.csv", "--target", "y", *FAST,
                          "--out", "m.pt", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + str(logs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "m.pt", "tiny.csv"]
    # Rank 0 reports and shows progress; rank 1 says nothing at all.
    assert "on 2 processes" in logs[0] and "wrote m.pt" in logs[0], logs[0]
    assert "fit: 100%" in logs[0], logs[0]
    assert logs[1] == "--- stdout\n--- stderr\n", logs[1]

    model = MDNRegressor.load(tmp_path / "m.pt")
    X, y = load_xy(data)
    assert model.predict(X).shape == (400,) and np.isfinite(model.predict(X)).all()
    assert len(model.history_) == 5
    # Same split, standardization and seeds as MDNRegressor.fit in one process: the same
    # scalers exactly, and weights that differ only by the float32 rounding of the
    # 2-rank gradient average.
    ref = MDNRegressor(**FAST_PARAMS, random_state=0).fit(X, y)
    for name in ("x_mean_", "x_scale_", "y_mean_", "y_scale_"):
        np.testing.assert_array_equal(getattr(model, name), getattr(ref, name), err_msg=name)
    np.testing.assert_allclose(model.predict(X), ref.predict(X), rtol=0, atol=1e-5)
    assert model.val_nll_ == pytest.approx(ref.val_nll_, abs=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_gloo
@pytest.mark.slow
def test_killed_peer_fails_without_hang_or_model(tmp_path: Path) -> None:
    # Launched by hand (torchrun's agent would kill the survivor for us): rank 0 must notice
    # that rank 1 died mid-training, print one error line and exit non-zero, writing nothing.
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir(), logs.mkdir()
    write_data(work / "d.csv", 20_000)  # ~0.5 s per epoch: training is under way for long
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        rank_env = env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       MIXTURE_DENSITY_DIST_TIMEOUT="5")  # fmt: skip
        cmd = [sys.executable, "-m", "mixture_density", "fit", "d.csv", "--target", "y",
               "--epochs", "10000", "--out", "m.pt"]  # fmt: skip
        with open(logs / f"out{rank}", "w") as out, open(logs / f"err{rank}", "w") as err:
            procs.append(subprocess.Popen(cmd, cwd=work, env=rank_env, stdout=out, stderr=err))
    try:
        # Rank 0's progress bar says that training has started: then kill rank 1.
        deadline = time.monotonic() + 120
        while "epoch/s" not in (logs / "err0").read_text() and time.monotonic() < deadline:
            assert procs[0].poll() is None, (logs / "err0").read_text()
            time.sleep(0.2)
        procs[1].kill()
        procs[0].wait(timeout=90)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    stderr = (logs / "err0").read_text()
    errors = [line for line in stderr.replace("\r", "\n").splitlines() if "mdn: error" in line]
    assert procs[0].returncode == 1, stderr[-2000:]
    assert len(errors) == 1 and "fit failed on rank 0 of 2" in errors[0], stderr[-2000:]
    stdout = (logs / "out0").read_text()  # the start line, no summary: nothing was written
    assert "Traceback" not in stderr and stdout.startswith("training on") and "wrote" not in stdout
    assert [p.name for p in work.iterdir()] == ["d.csv"]


@needs_gloo
@pytest.mark.slow
def test_torchrun_streamed_fit(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d.csv", 600)
    proc, logs = torchrun("-m", "mixture_density", "fit", "d.csv", "--target", "y", *FAST,
                          "--stream", "--chunk-rows", "50", "--quiet", "--out", "m.pt",
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + str(logs)
    assert "streaming d.csv" in logs[0] and logs[1] == "--- stdout\n--- stderr\n", logs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "logs", "m.pt"]
    model = MDNRegressor.load(tmp_path / "m.pt")
    X, _ = load_xy(data)
    assert np.isfinite(model.predict(X)).all()
    assert model.metadata_["streamed"] == {"rows": 600, "val_rows": 60, "chunk_rows": 50}


_RANK0_FAILS_AFTER_TRAINING = """
import errno, sys
from mixture_density import _commands
from mixture_density._options import FitResult

class Fitted:  # what training returned
    fit_results_ = [FitResult([], 1, 0.0, "max_epochs", 1)]

def finish(fitted):  # rank 0 only: writing the model fails after the work
    raise OSError(errno.EACCES, "Permission denied", "/proc/m.pt")

sys.exit(_commands._fit_distributed(lambda: Fitted(), finish, lambda fitted: 130))
"""


@needs_gloo
@pytest.mark.slow
def test_torchrun_rank0_write_failure_fails_every_rank(tmp_path: Path) -> None:
    # Rank 0's save fails after training (every output is checked before the work, so this
    # takes a failure the checks cannot see, e.g. a full disk), and rank 1, waiting for it in
    # the final all-reduce, must fail too instead of reporting success.
    (tmp_path / "rank0_fails.py").write_text(_RANK0_FAILS_AFTER_TRAINING)
    proc, logs = torchrun("rank0_fails.py", cwd=tmp_path)
    assert proc.returncode != 0
    assert "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
    assert logs[0].count("mdn: error:") == 1 and "/proc/" in logs[0], logs[0]
    assert "mdn: error: rank 0 failed after training" in logs[1], logs[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "rank0_fails.py"]


@needs_gloo
@pytest.mark.slow
def test_torchrun_ctrl_c_keeps_the_model_on_every_rank(tmp_path: Path) -> None:
    # Ctrl-C in a terminal reaches every process of the job. No rank waits for another:
    # rank 0 keeps the best weights so far aside, --out stays as it was, all exit 130.
    write_data(tmp_path / "big.csv", 30_000)
    (tmp_path / "model.pt").write_bytes(b"the old model")
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "--log-dir", str(logs), "--redirects", "3", "-m", "mixture_density", "fit",
           "big.csv", "--target", "y", "--epochs", "100000", "--hidden", "8", "--quiet",
           "--out", "model.pt"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # rank 0 says it starts training...
        started = glob.glob(str(logs / "**" / "0" / "stdout.log"), recursive=True)
        if started and "training on" in Path(started[0]).read_text():
            break
        time.sleep(0.2)
    time.sleep(10)  # ... and trains some epochs (the first step imports torch._dynamo: seconds)
    os.killpg(proc.pid, 2)  # SIGINT to the whole job, as the terminal sends it
    proc.communicate(timeout=120)
    rank_logs = {int(Path(p).parent.name): Path(p).read_text()
                 for p in glob.glob(str(logs / "**" / "stderr.log"), recursive=True)}  # fmt: skip
    assert (tmp_path / "model.pt").read_bytes() == b"the old model"
    assert "is unchanged" in rank_logs[0] and "model.interrupted.pt" in rank_logs[0]
    assert "Traceback" not in rank_logs[0] + rank_logs[1], rank_logs
    assert MDNRegressor.load(tmp_path / "model.interrupted.pt").predict(np.zeros((2, 2))).shape
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------ streaming


def test_distributed_fit_in_one_process_is_estimator_fit() -> None:
    # Without torchrun, the CLI's distributed=None fit must be MDNRegressor.fit exactly: same
    # draws from random_state, same split, same initialization, same stored attributes.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 2))
    y = np.column_stack([X[:, 0] ** 2, X[:, 1]]) + 0.1 * rng.normal(size=(150, 2))
    ref = MDNRegressor(**FAST_PARAMS, random_state=3).fit(X, y)
    est = MDNRegressor(**FAST_PARAMS, random_state=3)._fit(X, y, distributed=None)
    assert sorted(k for k in vars(est) if k.endswith("_")) == sorted(
        k for k in vars(ref) if k.endswith("_")
    )
    np.testing.assert_array_equal(est.predict(X), ref.predict(X))
    assert est.val_nll_ == ref.val_nll_ and est._y_1d == ref._y_1d
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in ref.history_]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in est.history_] == strip


def test_torchrun_needs_a_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without one, each rank would draw its own validation split: refused before training.
    monkeypatch.setenv("WORLD_SIZE", "2")
    X, y = np.zeros((20, 1)), np.arange(20.0)
    with pytest.raises(ValueError, match="random_state=None under torchrun"):
        MDNRegressor(**FAST_PARAMS)._fit(X, y, distributed=None)
    scan = scan_csv(str(write_data(tmp_path / "d.csv", 50)), ["x1"], ["y"], chunk_rows=10)
    with pytest.raises(ValueError, match="random_state=None under torchrun"):
        fit_streamed(MDNRegressor(**FAST_PARAMS), scan)


def test_streamed_fit_saves_loads_and_matches_in_memory_scalers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_data(tmp_path / "d.csv", 300, constant=True)
    assert data.stat().st_size > 0.01 * 2**20  # the budget below forces streaming
    out = tmp_path / "m.pt"
    argv = ["fit", str(data), "--target", "y", "--epochs", "30", "--hidden", "16",
            "--components", "2", "--quiet", "--memory-budget", "0.01", "--chunk-rows", "64",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "streaming" in stdout and "the first 30 rows of the file" in stdout, stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "m.pt"]

    model = MDNRegressor.load(out)
    X, y = load_xy(data)
    ref = MDNRegressor(**{**FAST_PARAMS, "epochs": 1}).fit(X, y)
    for name in ("x_mean_", "x_scale_", "y_mean_", "y_scale_"):
        np.testing.assert_allclose(getattr(model, name), getattr(ref, name), rtol=0,
                                   atol=1e-10, err_msg=name)  # fmt: skip
    assert model.x_scale_[2] == 1.0  # the constant column, left unscaled by both
    assert model.metadata_["streamed"] == {"rows": 300, "val_rows": 30, "chunk_rows": 64}
    pred = model.predict(X)
    assert pred.shape == (300,) and np.isfinite(pred).all()
    # It learned y = sin(x1) + 0.1 eps: far better than a Gaussian fitted to y alone
    # (NLL 0.5 log(2 pi e var y) ~ 1.1 nats here).
    marginal = 0.5 * np.log(2 * np.pi * np.e * y.var())
    assert -model.log_prob(X, y).mean() < marginal - 0.5


def test_fit_streamed_round_trip(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d.csv", 120)
    X, y = load_xy(data)
    scan = scan_csv(str(data), ["x1", "x2"], ["y"], chunk_rows=32, val_rows=20)
    assert scan.n_rows == 120 and scan.n_val == 20 and scan.y_init.shape == (32, 1)
    np.testing.assert_array_equal(scan.x_val, X[:20])
    np.testing.assert_array_equal(scan.y_init[:, 0], y[20:52])  # the first *training* chunk
    est = fit_streamed(MDNRegressor(**FAST_PARAMS, random_state=0), scan)
    ref = MDNRegressor(**FAST_PARAMS, random_state=0).fit(X, y)
    assert sorted(vars(est)) == sorted(vars(ref))  # every attribute that fit sets, no more
    est.save(tmp_path / "m.pt")
    loaded = MDNRegressor.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    assert loaded.val_nll_ == pytest.approx(-est.log_prob(X[:20], y[:20]).mean(), abs=1e-12)
    assert len(loaded.history_) == 5


def test_stream_batches_equal_collated_rows(tmp_path: Path) -> None:
    # The batched stream that streamed fits train on must give exactly the DataLoader batches
    # of the rows (same shuffle, batches across chunk boundaries), only faster.
    from torch.utils.data import DataLoader

    from mixture_density import CSVChunkDataset

    path = str(write_data(tmp_path / "d.csv", 103))
    moments = scan_csv(path, ["x1", "x2"], ["y"], chunk_rows=7).moments
    kw = {"skip_rows": 10, "shuffle": True, "seed": 3, "transform": moments.standardize}
    rows = CSVChunkDataset(path, ["x1", "x2"], ["y"], 7, **kw)  # type: ignore[arg-type]
    batched = CSVChunkDataset(path, ["x1", "x2"], ["y"], 7, batch_rows=5, **kw)  # type: ignore[arg-type]
    for ds in (rows, batched):
        ds.set_epoch(2)
    expected = list(DataLoader(rows, batch_size=5))
    got = list(DataLoader(batched, batch_size=None))
    assert len(got) == len(expected) == 19  # 93 rows: 18 batches of 5 and one of 3
    for (xa, ya), (xb, yb) in zip(got, expected):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_fit_streamed_two_targets(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d.csv", 80)
    X, _ = load_xy(data)
    scan = scan_csv(str(data), ["x1"], ["x2", "y"], chunk_rows=16)
    est = fit_streamed(MDNRegressor(**FAST_PARAMS, random_state=0), scan)
    ref = MDNRegressor(**{**FAST_PARAMS, "epochs": 1}).fit(X[:, :1], np.loadtxt(
        data, delimiter=",", skiprows=1, usecols=(1, 2)))  # fmt: skip
    np.testing.assert_allclose(est.y_scale_, ref.y_scale_, rtol=0, atol=1e-10)
    assert est.predict(X[:5, :1]).shape == (5, 2) and np.isfinite(est.val_nll_)


@pytest.fixture
def stream_files(tmp_path: Path) -> Path:
    lines = [f"{i / 100},{i % 7},{np.sin(i)}" for i in range(300)]
    bad = {"nan_mid": (200, "1.5,nan,0.2"), "text_mid": (250, "1.5,abc,0.2"),
           "ragged_mid": (150, "1.5,0.2")}  # fmt: skip
    for name, (row, text) in bad.items():
        body = [*lines[:row], text, *lines[row + 1 :]]
        (tmp_path / f"{name}.csv").write_text("x1,x2,y\n" + "\n".join(body) + "\n")
    (tmp_path / "good.csv").write_text("x1,x2,y\n" + "\n".join(lines) + "\n")
    # Blank lines are skipped but still count for the line numbers of later errors.
    body = [*lines[:100], "", ",,", *lines[100:200], "1.5,,0.2", *lines[201:]]
    (tmp_path / "blank_lines.csv").write_text("x1,x2,y\n" + "\n".join(body) + "\n")
    (tmp_path / "header_only.csv").write_text("x1,x2,y\n")
    return tmp_path


STREAM = ["--stream", "--chunk-rows", "64", "--epochs", "1", "--quiet", "--out", "{tmp}/m.pt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/good.csv", "--target", "nope", *STREAM], "target column(s) 'nope' not found"),
        (["{tmp}/good.csv", "--target", "y", "--features", "zz", *STREAM], "'zz' not found"),
        (["{tmp}/nan_mid.csv", "--target", "y", *STREAM], "line 202, column 'x2': 'nan'"),
        (["{tmp}/text_mid.csv", "--target", "y", *STREAM], "line 252, column 'x2': 'abc' is not"),
        (["{tmp}/ragged_mid.csv", "--target", "y", *STREAM], "line 152: 2 fields"),
        (["{tmp}/blank_lines.csv", "--target", "y", *STREAM], "line 204, column 'x2': empty"),
        (["{tmp}/header_only.csv", "--target", "y", *STREAM], "no data rows"),
        (["{tmp}/good.csv", "--target", "y", "--val-rows", "300", *STREAM], "no training rows"),
        (["{tmp}/good.csv", "--target", "y", "--estimators", "2", *STREAM], "--estimators 1"),
        (["{tmp}/good.csv", "--target", "y", "--val-rows", "5", "--out", "{tmp}/m.pt"],
         "--val-rows applies to streamed fits"),
        (["{tmp}/good.csv", "--target", "y", "--memory-budget", "0", *STREAM],
         "--memory-budget"),
    ],
)  # fmt: skip
def test_streamed_bad_input_exits_2_with_one_line(
    argv: list[str], message: str, stream_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = set(stream_files.iterdir())
    assert main(["fit", *(a.format(tmp=stream_files) for a in argv)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdn: error: "), captured.err
    assert message in lines[0], lines[0]
    assert set(stream_files.iterdir()) == before  # no model file, not even a temporary one
