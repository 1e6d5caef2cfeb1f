"""Faults a careful user's scripts meet: signals, outputs that would overwrite inputs,
permissions, unwritable places, damaged model files, extreme and huge cells.

Every case asserts the exit status, the one line on stderr (no traceback) and that no file
changed or appeared (temporary files included). The commands run as subprocesses through
``python -m mixture_density``, as a user's script would run them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mixture_density.estimator import MDNRegressor

QUICK = ["--epochs", "3", "--hidden", "8", "--components", "2", "--estimators", "1", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def mdn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mixture_density", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        check=False,
    )


def files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder`` (hidden ones too): name -> (sha256, permission bits)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(folder))] = (digest, stat.S_IMODE(p.stat().st_mode))
    return out


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def write_data(path: Path, n: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=n)
    y = np.sin(x) + 0.2 * rng.normal(size=n)
    path.write_text("x,y\n" + "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in zip(x, y)))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.csv and model.pt (fitted by the command), read-only for the tests."""
    folder = tmp_path_factory.mktemp("faults")
    write_data(folder / "data.csv")
    done = mdn("fit", "data.csv", "--target", "y", *QUICK, "--out", "model.pt", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture()
def work(root: Path, tmp_path: Path) -> Path:
    """A fresh copy of data.csv and model.pt to damage."""
    for name in ("data.csv", "model.pt"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    return tmp_path


# ------------------------------------------------------------------------------ signals


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mixture_density", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_signal_while_importing_gives_one_line(work: Path, sig: int, code: int, word: str) -> None:
    before = files(work)
    proc = start("fit", "data.csv", "--target", "y", *QUICK, "--out", "model.pt", cwd=work)
    time.sleep(0.3)  # python is up; torch (seconds to import) is not
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert one_line(err) == f"mdn: {word}"
    assert files(work) == before


@pytest.mark.slow
def test_sigterm_at_any_moment_of_a_fit_gives_143_and_no_file(work: Path) -> None:
    """SIGTERM at 12 moments from 0.2 to 2.4 s into ``mdn fit`` (imports, reading, training,
    writing): status 143 with one line and no model file, or (too late) status 0 and the
    model. Before ``cli.run`` left through ``os._exit``, some runs died by SIGINT (status -2)
    after printing the line, and one lost the signal inside an import and wrote the model."""
    (work / "model.pt").unlink()
    for i in range(12):
        proc = start("fit", "data.csv", "--target", "y", *QUICK, "--out", "model.pt", cwd=work)
        time.sleep(0.2 + 0.2 * i)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        written = (work / "model.pt").exists()
        if proc.returncode == 0:  # finished before the signal
            assert written and err.strip() == "", err
            (work / "model.pt").unlink()
        else:
            assert proc.returncode == 143 and one_line(err) == "mdn: terminated", (i, err)
            assert not written


def test_an_interrupt_python_ignores_is_raised_again(capsys: pytest.CaptureFixture[str]) -> None:
    """A signal whose handler runs where Python ignores exceptions (here a ``__del__``; in
    the wild importlib's module-lock callbacks while torch imports, where a SIGTERM was
    lost and the fit ran to the end): no "Exception ignored" print, and ``check`` raises."""
    from mixture_density import _signals

    class RunsTheHandler:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # the handler raises inside __del__

    seen: list[object] = []
    outer = sys.unraisablehook
    sys.unraisablehook = seen.append  # what reaches the hook would be printed
    try:
        with _signals.handled():
            obj = RunsTheHandler()
            del obj
            assert _signals.received() == signal.SIGTERM
            with pytest.raises(KeyboardInterrupt):
                _signals.check()
    finally:
        sys.unraisablehook = outer
    assert seen == [] and "Exception ignored" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not _signals._raise  # handlers restored
    _signals.reset()
    _signals.check()  # nothing pending: no raise


def test_a_signal_during_the_imports_waits_for_them() -> None:
    """Inside ``deferred`` (mdn's import of torch) a signal is recorded, not raised: raised
    inside an extension's C++ initialization it aborted the process (status -6)."""
    from mixture_density import _signals

    with _signals.handled():
        with _signals.deferred():
            signal.raise_signal(signal.SIGINT)
            assert _signals.received() == signal.SIGINT  # and nothing raised here
        with pytest.raises(KeyboardInterrupt):
            _signals.check()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)  # outside the block: at once
    assert _signals.exit_status() == 143
    _signals.reset()


def big_data(path: Path) -> Path:
    """Data whose epochs take a few milliseconds (fitted with --patience 100000: no early
    stopping), so that a signal a few seconds into training finds epochs completed."""
    return write_data(path, n=2000, seed=1)


def wait_for_training(proc: subprocess.Popen[str]) -> None:
    """Block until the command says it starts training (its first stdout line)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(("training on", "streaming")), line
    if line.startswith("streaming"):
        assert proc.stdout.readline().startswith("training on")


@pytest.mark.parametrize("mode", ["one network", "ensemble", "streamed"])
def test_interrupted_fit_keeps_the_model_and_saves_the_best_weights_aside(
    work: Path, mode: str
) -> None:
    big_data(work / "big.csv")
    before = files(work)
    extra = {"one network": ["--estimators", "1"], "ensemble": [], "streamed": ["--stream"]}
    forever = ["--epochs", "100000", "--patience", "100000"]
    proc = start("fit", "big.csv", "--target", "y", *forever, "--hidden", "8", "--quiet",
                 *extra[mode], "--out", "model.pt", cwd=work)  # fmt: skip
    wait_for_training(proc)
    time.sleep(10)  # some epochs (the first optimizer step imports torch._dynamo: seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = one_line(err)
    assert line.startswith("mdn: interrupted in epoch ") and "model.pt is unchanged" in line
    after = files(work)
    assert {k: v for k, v in after.items() if k != "model.interrupted.pt"} == before
    assert "the best weights so far" in line and "model.interrupted.pt" in after
    kept = MDNRegressor.load(work / "model.interrupted.pt")
    assert np.isfinite(kept.predict(np.zeros((3, 1)))).all()


def test_sigterm_during_save_leaves_no_temporary_file(work: Path) -> None:
    before = files(work)
    # The signal arrives while the model file is being written (after torch.save returns,
    # before the rename): the temporary file must go, the old model must stay.
    code = (
        "import os, signal, sys, time, torch\n"
        "save = torch.save\n"
        "def slow_save(*args, **kwargs):\n"
        "    save(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "torch.save = slow_save\n"
        "from mixture_density.cli import main\n"
        f"sys.exit(main({['fit', 'data.csv', '--target', 'y', *QUICK, '--out', 'model.pt']!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True,
                          text=True, timeout=120, env=ENV, check=False)  # fmt: skip
    assert done.returncode == 143, done.stderr
    assert one_line(done.stderr) == "mdn: terminated"
    assert files(work) == before


# ------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "model.pt", "data.csv", "--output", "data.csv"], "is the input file"),
        (["predict", "model.pt", "data.csv", "--output", "./data.csv"], "is the input file"),
        (["predict", "model.pt", "data.csv", "--output", "model.pt"], "is the input file"),
        (["fit", "data.csv", "--target", "y", "--out", "data.csv"], "is the input file"),
        (["evaluate", "model.pt", "data.csv", "--plot", "data.csv"], "is the input file"),
        (["evaluate", "model.pt", "data.csv", "--plot", "e.csv"], "--plot must end in"),
        (["fit", "data.csv", "--target", "y", "--out", "model.csv"], "--out must end in"),
        (["predict", "model.pt", "data.csv", "--output", ""], "--output is empty"),
        (["predict", "model.pt", "data.csv", "--output", "sub"], "it is a directory"),
        (["fit", "data.csv", "--target", "y", "--out", "no/dir/m.pt"], "does not exist"),
    ],
)
def test_outputs_that_would_destroy_inputs_are_refused_first(
    work: Path, args: list[str], message: str
) -> None:
    (work / "sub").mkdir()
    before = files(work)
    done = mdn(*args, cwd=work)
    assert done.returncode == 2, done.stderr
    assert message in one_line(done.stderr)
    assert files(work) == before


def test_hard_link_to_the_input_is_the_input(work: Path) -> None:
    os.link(work / "data.csv", work / "alias.csv")
    before = files(work)
    done = mdn("predict", "model.pt", "data.csv", "--output", "alias.csv", cwd=work)
    assert done.returncode == 2 and "is the input file" in one_line(done.stderr)
    assert files(work) == before


def test_replaced_output_keeps_its_permissions_and_links(work: Path) -> None:
    (work / "private.csv").write_text("old\n")
    os.chmod(work / "private.csv", 0o600)
    (work / "target.csv").write_text("old\n")
    os.symlink("target.csv", work / "link.csv")
    for name in ("private.csv", "link.csv"):
        done = mdn("predict", "model.pt", "data.csv", "--output", name, cwd=work)
        assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((work / "private.csv").stat().st_mode) == 0o600
    assert (work / "private.csv").read_text().startswith("y_mean")
    assert (work / "link.csv").is_symlink()  # written through: the link stays a link
    assert (work / "target.csv").read_text().startswith("y_mean")


def test_read_only_output_is_refused(work: Path) -> None:
    (work / "frozen.csv").write_text("keep\n")
    os.chmod(work / "frozen.csv", 0o444)
    before = files(work)
    done = mdn("predict", "model.pt", "data.csv", "--output", "frozen.csv", cwd=work)
    assert done.returncode == 2 and "read-only" in one_line(done.stderr)
    assert files(work) == before


def test_unwritable_directory_fails_before_the_fit(work: Path) -> None:
    locked = work / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        # root writes anywhere on a writable mount: /proc refuses new files even to root.
        target = "/proc/self/m.pt" if os.geteuid() == 0 else str(locked / "m.pt")
        big_data(work / "big.csv")
        before = files(work)
        t0 = time.monotonic()
        done = mdn("fit", "big.csv", "--target", "y", "--epochs", "100000", "--out", target,
                   cwd=work)  # fmt: skip
        assert done.returncode == 2 and "not writable" in one_line(done.stderr)
        assert time.monotonic() - t0 < 60  # refused up front, not after 100,000 epochs
        assert ".tmp" not in one_line(done.stderr)  # names the file, not a temporary one
        assert files(work) == before
    finally:
        os.chmod(locked, 0o755)


# ------------------------------------------------------------------------------ model files


def rewrite(path: Path, edit: object) -> None:
    """Load the torch container of a model file, let ``edit(payload)`` change it, save it."""
    payload = torch.load(path, weights_only=True)
    edit(payload)  # type: ignore[operator]
    torch.save(payload, path)


def flip_weight_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    # The local header is 30 bytes plus the name and extra field; the data follows it.
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[offset + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_config(payload: dict[str, object]) -> None:
    config = json.loads(str(payload["config"]))
    config["params"]["hidden_dims"] = [200000, 200000]
    payload["config"] = json.dumps(config)


def huge_but_consistent(payload: dict[str, object]) -> None:
    # The checksum is recomputed: the file is self-consistent but its configuration
    # describes 320 GB of weights that are not in it.
    from mixture_density._serialization import content_digest

    edit_config(payload)
    tensors = payload["tensors"]
    assert isinstance(tensors, dict)
    payload["sha256"] = content_digest(str(payload["config"]), tensors)


def drop_tensors(payload: dict[str, object]) -> None:
    del payload["tensors"]


class Exploit:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (flip_weight_byte, "corrupted"),
        (truncate, "truncated or corrupted"),
        (lambda p: rewrite(p, edit_config), "corrupted"),
        (lambda p: rewrite(p, huge_but_consistent), "weights do not match"),
        (lambda p: rewrite(p, drop_tensors), "corrupted"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: torch.save({"format": "mixture-density-checkpoint", "x": Exploit()}, p),
         "not a mixture-density model file"),
    ],
)  # fmt: skip
def test_damaged_model_file_gives_one_line_and_exit_2(
    work: Path, damage: object, message: str
) -> None:
    damage(work / "model.pt")  # type: ignore[operator]
    before = files(work)
    t0 = time.monotonic()
    done = mdn("predict", "model.pt", "data.csv", "--output", "p.csv", cwd=work)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert message in line
    assert "weights_only" not in line  # never advise loading without protection
    assert time.monotonic() - t0 < 60  # no 320 GB allocation first
    assert files(work) == before and not (work / "pwned").exists()


def test_model_file_without_checksum_still_loads(work: Path) -> None:
    # Files written before checksums existed have no "sha256" entry: read unverified.
    rewrite(work / "model.pt", lambda payload: payload.pop("sha256"))
    model = MDNRegressor.load(work / "model.pt")
    assert model.predict(np.zeros((2, 1))).shape == (2,)


# ------------------------------------------------------------------------------ cells


@pytest.mark.parametrize("stream", [False, True])
def test_value_whose_square_overflows_names_line_and_column(work: Path, stream: bool) -> None:
    text = (work / "data.csv").read_text().splitlines()
    text[5] = "1e300," + text[5].split(",")[1]  # line 6 of the file
    (work / "data.csv").write_text("\n".join(text) + "\n")
    before = files(work)
    done = mdn("fit", "data.csv", "--target", "y", *QUICK, *(["--stream"] if stream else []),
               "--out", "new.pt", cwd=work)  # fmt: skip
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "line 6, column 'x'" in line and "too large" in line
    assert files(work) == before


def test_estimator_refuses_overflowing_values() -> None:
    X = np.zeros((20, 2))
    X[7, 1] = 1e300
    with pytest.raises(ValueError, match="row 7, column 1"):
        MDNRegressor(epochs=1).fit(X, np.arange(20.0))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("x,y\n" + "1" * 200_000 + ",2\n", "line 2"),
        ("x,y\n" + "a" * 1000 + ",2\n", "1000 characters"),
        ("x,y\n1,2\n3,caf\xe9\n", "not UTF-8"),
    ],
)
def test_huge_cells_and_foreign_encodings_give_one_line(
    work: Path, content: str, message: str
) -> None:
    (work / "odd.csv").write_bytes(content.encode("latin-1"))
    before = files(work)
    done = mdn("fit", "odd.csv", "--target", "y", *QUICK, "--out", "new.pt", cwd=work)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert message in line and "odd.csv" in line and len(line) < 400
    assert files(work) == before
