"""Tests for the ``mdn`` command: in-process ``main`` and the installed console script."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _helpers import write_csv
from mixture_density._files import atomic_path
from mixture_density.cli import main
from mixture_density.estimator import MDNRegressor

# The console script installed next to the interpreter running the tests (.venv/bin/mdn).
MDN = Path(sys.executable).with_name("mdn")
FAST_FIT = ["--epochs", "5", "--hidden", "8", "--components", "2", "--quiet"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with data.csv (x1, x2, y, y2), a model fitted on it by the CLI, one by Python."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    n = 120
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    y = np.sin(x1) + 0.1 * rng.normal(size=n)
    y2 = x2 + 0.1 * rng.normal(size=n)
    write_csv(root / "data.csv", ["x1", "x2", "y", "y2"], np.column_stack([x1, x2, y, y2]).tolist())
    write_csv(root / "features.csv", ["x2", "x1"], np.column_stack([x2, x1]).tolist())
    assert main(["fit", str(root / "data.csv"), "--target", "y", "--features", "x1", "x2",
                 *FAST_FIT, "--out", str(root / "model.pt")]) == 0  # fmt: skip
    # Saved from Python, without column names: the CLI must fall back to column counts.
    X = np.column_stack([x1, x2])
    MDNRegressor(n_components=2, hidden_dims=(8,), epochs=3).fit(X, y).save(root / "plain.pt")
    return root


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)``, expect exit 2 and exactly one stderr line; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mdn: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------ happy paths


def test_fit_writes_model_and_reports_validation_nll(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    argv = ["fit", str(workdir / "data.csv"), "--target", "y", "y2", *FAST_FIT, "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "validation NLL" in stdout and "2 features -> 2 targets" in stdout
    model = MDNRegressor.load(out)
    assert model.metadata_ == {"features": ["x1", "x2"], "targets": ["y", "y2"]}
    assert model.n_outputs_ == 2
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_fit_ensemble_size_defaults_to_the_estimators(tmp_path: Path, workdir: Path) -> None:
    from mixture_density.estimator import DEFAULTS

    out = tmp_path / "m.pt"
    assert (
        main(["fit", str(workdir / "data.csv"), "--target", "y", *FAST_FIT, "--out", str(out)]) == 0
    )
    assert MDNRegressor.load(out).n_estimators == DEFAULTS["n_estimators"]


def test_predict_writes_mean_quantiles_and_samples(tmp_path: Path, workdir: Path) -> None:
    out = tmp_path / "pred.csv"
    argv = ["predict", str(workdir / "model.pt"), str(workdir / "data.csv"),
            "--quantiles", "0.1", "0.9", "--samples", "3", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    with open(out) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["y_mean", "y_q0.1", "y_q0.9", "y_sample0", "y_sample1", "y_sample2"]
    values = np.array(rows[1:], dtype=float)
    assert values.shape == (120, 6)
    assert np.all(values[:, 1] < values[:, 2])
    model = MDNRegressor.load(workdir / "model.pt")
    data = np.loadtxt(workdir / "data.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(values[:, 0], model.predict(data[:, :2]), rtol=1e-12)


def test_predict_selects_feature_columns_by_name(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # features.csv has the columns in another order and no target: names decide, not order.
    assert main(["predict", str(workdir / "model.pt"), str(workdir / "features.csv")]) == 0
    from_names = np.loadtxt(capsys.readouterr().out.splitlines()[1:], delimiter=",")
    assert main(["predict", str(workdir / "model.pt"), str(workdir / "data.csv")]) == 0
    from_data = np.loadtxt(capsys.readouterr().out.splitlines()[1:], delimiter=",")
    np.testing.assert_array_equal(from_names, from_data)


def test_evaluate_prints_scores_and_plots(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "calibration.png"
    argv = ["evaluate", str(workdir / "model.pt"), str(workdir / "data.csv"), "--plot", str(plot)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    for word in ("NLL", "CRPS", "coverage of the central 90% interval"):
        assert word in stdout
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.png"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "held-out NLL" in stdout and "nearest branch" in stdout
    assert out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_demo_full_learns_the_branches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo.png")]) == 0
    stdout = capsys.readouterr().out
    line = next(s for s in stdout.splitlines() if s.startswith("held-out NLL"))
    nll = float(line.split()[2])
    true_nll = float(line.split(":")[-1].rstrip(")"))
    assert nll < true_nll + 0.15, stdout


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("mdn ")


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def bad_csvs(tmp_path: Path) -> Path:
    write_csv(tmp_path / "text.csv", ["x1", "x2", "y"], [[1, 2, 3], [1, "abc", 3]])
    write_csv(tmp_path / "nan.csv", ["x1", "x2", "y"], [[1, 2, 3], [1, "nan", 3]])
    write_csv(tmp_path / "empty_cell.csv", ["x1", "x2", "y"], [[1, 2, 3], [1, "", 3]])
    write_csv(tmp_path / "ragged.csv", ["x1", "x2", "y"], [[1, 2, 3], [1, 2]])
    write_csv(tmp_path / "three.csv", ["a", "b", "c"], [[1, 2, 3], [4, 5, 6]])
    write_csv(tmp_path / "only_y.csv", ["y"], [[1], [2]])
    write_csv(tmp_path / "dupes.csv", ["x", "x", "y"], [[1, 2, 3]])
    (tmp_path / "header_only.csv").write_text("x1,x2,y\n")
    (tmp_path / "blank.csv").write_text("")
    return tmp_path


OUT_PT = ["--out", "{tmp}/out.pt"]
OUT_CSV = ["--output", "{tmp}/out.csv"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "{tmp}/missing.csv", "--target", "y", *OUT_PT], "No such file"),
        (["fit", "{data}", "--target", "nope", *OUT_PT], "'nope' not found"),
        (["fit", "{data}", "--target", "y", "--features", "zz", *OUT_PT], "'zz'"),
        (["fit", "{data}", "--target", "y", "--features", "y", *OUT_PT], "both"),
        (["fit", "{tmp}/text.csv", "--target", "y", *OUT_PT], "'abc' is not a number"),
        (["fit", "{tmp}/nan.csv", "--target", "y", *OUT_PT], "line 3, column 'x2'"),
        (["fit", "{tmp}/empty_cell.csv", "--target", "y", *OUT_PT], "empty cell"),
        (["fit", "{tmp}/ragged.csv", "--target", "y", *OUT_PT], "2 fields"),
        (["fit", "{tmp}/only_y.csv", "--target", "y", *OUT_PT], "no feature"),
        (["fit", "{tmp}/dupes.csv", "--target", "y", *OUT_PT], "appears twice"),
        (["fit", "{tmp}/header_only.csv", "--target", "y", *OUT_PT], "no data rows"),
        (["fit", "{tmp}/blank.csv", "--target", "y", *OUT_PT], "empty file"),
        (["fit", "{data}", "--target", "y", "--out", "{tmp}/no/such/dir/out.pt"], "does not exist"),
        (["fit", "{data}", "--target", "y", "--noise", "bogus", *OUT_PT], "noise_type"),
        (["fit", "{data}", "--target", "y", "--components", "0", *OUT_PT], "--components"),
        (["fit", "{data}", "--target", "y", "--epochs", "many", *OUT_PT], "--epochs"),
        (["fit", "{data}", "--target", "y"], "--out"),
        (["frobnicate"], "invalid choice"),
        (["predict", "{model}", "{tmp}/three.csv", *OUT_CSV], "'x1', 'x2' not found"),
        (["predict", "{plain}", "{tmp}/three.csv", *OUT_CSV], "expects 2 features"),
        (["predict", "{data}", "{data}", *OUT_CSV], "not a mixture-density model"),
        (["predict", "{tmp}/missing.pt", "{data}", *OUT_CSV], "No such file"),
        (["predict", "{model}", "{data}", "--quantiles", "1.5", *OUT_CSV], "--quantiles"),
        (["predict", "{model}", "{data}", "--samples", "-1", *OUT_CSV], "--samples"),
        (["evaluate", "{plain}", "{data}"], "no target column names"),
        (["evaluate", "{model}", "{tmp}/three.csv", "--plot", "{tmp}/out.png"], "not found"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(
    argv: list[str],
    message: str,
    workdir: Path,
    bad_csvs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {"tmp": bad_csvs, "data": workdir / "data.csv", "model": workdir / "model.pt",
             "plain": workdir / "plain.pt"}  # fmt: skip
    before = set(bad_csvs.iterdir())
    line = run_error([a.format(**names) for a in argv], capsys)
    assert message in line
    assert set(bad_csvs.iterdir()) == before  # no output file, not even a temporary one


def test_failure_after_start_leaves_no_partial_output(
    tmp_path: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failure in the middle of writing (here: sampling raises) leaves neither the output
    # file nor a temporary file behind, and an existing output file untouched.
    out = tmp_path / "pred.csv"
    out.write_text("old\n")

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("sampling failed")

    monkeypatch.setattr(MDNRegressor, "sample", broken)
    argv = ["predict", str(workdir / "model.pt"), str(workdir / "data.csv"),
            "--samples", "2", "--output", str(out)]  # fmt: skip
    assert "sampling failed" in run_error(argv, capsys)
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]


def test_atomic_path_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ installed command


def run_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env, check=False
    )


def test_installed_command_and_python_dash_m(tmp_path: Path, workdir: Path) -> None:
    # Three processes (each imports torch: seconds): fit via the console script, predict via
    # ``python -m mixture_density``, and one user error through the console script.
    assert MDN.exists(), f"console script not installed at {MDN}"
    data = str(workdir / "data.csv")
    fit = run_command(
        str(MDN), "fit", data, "--target", "y", *FAST_FIT, "--out", "m.pt", cwd=tmp_path
    )
    assert fit.returncode == 0, fit.stderr
    assert "validation NLL" in fit.stdout
    pred = run_command(
        sys.executable, "-m", "mixture_density", "predict", "m.pt", data, "--quantiles", "0.5",
        cwd=tmp_path,
    )  # fmt: skip
    assert pred.returncode == 0, pred.stderr
    assert pred.stdout.splitlines()[0] == "y_mean,y_q0.5"
    assert len(pred.stdout.splitlines()) == 121

    bad = run_command(str(MDN), "fit", data, "--target", "nope", "--out", "x.pt", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("mdn: error: ") and "Traceback" not in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
