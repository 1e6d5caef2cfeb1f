"""The ``mdn`` command with grid, bounded, censored and partly missing targets: flags, the
point-mass warning and notes, one-line errors that leave no file behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _helpers import write_csv
from mixture_density.cli import main
from mixture_density.estimator import MDNRegressor

FAST = ["--epochs", "5", "--hidden", "8", "--components", "2", "--estimators", "1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """grades.csv (x, grade), survival.csv (x, time, death, upper), two.csv (x, a, b with gaps)."""
    root = tmp_path_factory.mktemp("targets")
    rng = np.random.default_rng(0)
    n = 200
    x = rng.uniform(-1, 1, n)
    grade = np.clip(np.round(5 + 1.5 * x + 0.6 * rng.standard_normal(n)), 3, 8)
    x2 = rng.uniform(size=n)
    write_csv(root / "grades.csv", ["x", "x2", "grade"], np.column_stack([x, x2, grade]).tolist())
    T, C = np.exp(1 + x + 0.5 * rng.standard_normal(n)), np.exp(1.2 + 0.5 * rng.standard_normal(n))
    t, death = np.minimum(T, C), (T <= C).astype(float)
    upper = np.where(death == 1, "", "inf")
    rows = [[a, b, c, d] for a, b, c, d in zip(x, t, death, upper)]
    write_csv(root / "survival.csv", ["x", "time", "death", "upper"], rows)
    a, b = x + 0.1 * rng.standard_normal(n), -x + 0.1 * rng.standard_normal(n)
    two = [[xi, "" if i % 7 == 0 else ai, "" if i % 5 == 0 and i % 7 else bi]
           for i, (xi, ai, bi) in enumerate(zip(x, a, b))]  # fmt: skip
    write_csv(root / "two.csv", ["x", "a", "b"], two)
    return root


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdn: error: "), lines
    return lines[0]


def test_fit_without_resolution_warns_in_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    argv = ["fit", str(data / "grades.csv"), "--target", "grade", *FAST, "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warning = [line for line in err if line.startswith("mdn: warning: ")]
    assert len(warning) == 1 and "--resolution 1" in warning[0] and "spacing 1" in warning[0]
    # evaluate flags the point masses of a continuous model's targets
    assert main(["evaluate", str(out), str(data / "grades.csv")]) == 0
    assert "note: target 'grade' has point masses" in capsys.readouterr().out


def test_fit_and_evaluate_a_grid_target(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    argv = ["fit", str(data / "grades.csv"), "--target", "grade", "--resolution", "1"]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "grid bins" in captured.out
    assert MDNRegressor.load(out).target_transform_[0]["resolution"] == 1.0
    assert main(["evaluate", str(out), str(data / "grades.csv")]) == 0
    text = capsys.readouterr().out
    assert "probability mass of the grid values" in text and "point masses" not in text
    assert main(["predict", str(out), str(data / "grades.csv"), "--samples", "3"]) == 0
    draws = np.array([[float(v) for v in line.split(",")] for line in
                      capsys.readouterr().out.strip().splitlines()[1:]])  # fmt: skip
    assert np.all(draws[:, 1:] == np.round(draws[:, 1:]))


def test_default_features_leave_out_the_event_column(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    path = str(data / "grades.csv")
    assert main(["fit", path, "--target", "x2", "--event", "x", *FAST, "--out", str(out)]) == 2
    assert "column 'x' (--event)" in capsys.readouterr().err  # read as events, not features


def test_censored_fit_with_event_and_upper_columns(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(data / "survival.csv")
    for flag in (["--event", "death"], ["--upper", "upper"]):
        out = tmp_path / f"m{flag[0]}.pt"
        argv = ["fit", path, "--target", "time", *flag, "--bounds", "0", "none", "--features", "x"]
        assert main([*argv, *FAST, "--out", str(out)]) == 0
        assert MDNRegressor.load(out).metadata_["features"] == ["x"]
        assert main(["evaluate", str(out), path, *flag]) == 0
        assert "survival or interval probability for censored rows" in capsys.readouterr().out


def test_missing_targets_and_features(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    argv = ["fit", str(data / "two.csv"), "--target", "a", "b", *FAST, "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(data / "two.csv")]) == 0
    assert "marginal over the observed targets" in capsys.readouterr().out
    # as a feature, the gappy column is an error naming line and column, or dropped on request
    argv = ["fit", str(data / "two.csv"), "--target", "b", "--features", "x", "a", *FAST]
    line = run_error([*argv, "--out", str(out.with_name("n.pt"))], capsys)
    assert "line 2, column 'a': empty cell" in line
    assert not out.with_name("n.pt").exists()
    assert main([*argv, "--missing", "drop", "--out", str(out.with_name("d.pt"))]) == 0
    assert "dropped 63 of 200 rows with missing cells" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--target", "grade", "--resolution", "0"], "target_resolution must be > 0"),
        (["--target", "grade", "--resolution", "1", "1"], "target_resolution has 2 entries"),
        (["--target", "grade", "--bounds", "8", "3"], "target_bounds must have lo < hi"),
        (["--target", "grade", "--bounds", "3", "7"], "outside target_bounds (3, 7)"),
        (["--target", "grade", "--bounds", "0", "9", "--bounds", "0", "9"], "2 entries"),
        (["--target", "grade", "--event", "x"], "line 2, column 'x' (--event)"),
        (["--target", "grade", "--upper", "x"], "y_upper must be >= y"),
        (["--target", "grade", "x", "--event", "grade"], "need one target column"),
        (["--target", "grade", "--bounds", "0", "nan"], "expected a number, inf or none"),
    ],
)
def test_bad_target_options_are_one_line_and_leave_no_file(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    out = tmp_path / "m.pt"
    line = run_error(["fit", str(data / "grades.csv"), *args, *FAST, "--out", str(out)], capsys)
    assert match in line
    assert list(tmp_path.iterdir()) == []


def test_target_options_refuse_streaming(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fit", str(data / "grades.csv"), "--target", "grade", "--resolution", "1", "--stream"]
    line = run_error([*argv, *FAST, "--out", str(tmp_path / "m.pt")], capsys)
    assert "--resolution need(s) an in-memory fit" in line
