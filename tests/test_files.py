"""Tests for mixture_density._files: the one atomic writer and the output-path checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mixture_density._errors import MixtureDensityError
from mixture_density._files import atomic_path, check_output_path


def test_atomic_path_replaces_only_when_complete_and_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.pt"
    target.write_text("old")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc") else "?")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".pt" and tmp.name.startswith(".")
        tmp.write_text("new")
        assert target.read_text() == "old"  # not yet replaced
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    if os.path.exists("/proc"):  # the file, then its directory
        assert synced[0].endswith(".tmp.pt") and synced[-1] == str(tmp_path)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_removes_the_temporary_file_on_failure(
    tmp_path: Path, error: type[BaseException]
) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_check_output_path(tmp_path: Path) -> None:
    check_output_path(None)
    check_output_path(str(tmp_path / "new.csv"))
    with pytest.raises(MixtureDensityError, match="does not exist"):
        check_output_path(str(tmp_path / "no" / "new.csv"))
    with pytest.raises(MixtureDensityError, match="it is a directory"):
        check_output_path(str(tmp_path))
