"""Tests for mixture_density._csv: one reader, one set of rules and messages for every path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mixture_density import CSVChunkDataset
from mixture_density._csv import Table, read_header, write_csv
from mixture_density._errors import MixtureDensityError
from mixture_density._streaming import scan_csv

GOOD = ["1,2,3", "4,5,6", "7,8,9"]


def _file(tmp_path: Path, lines: list[str], header: str = "a,b,y", name: str = "d.csv") -> str:
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in [header, *lines]), encoding="utf-8")
    return str(path)


def _message(read: object) -> str:
    with pytest.raises(MixtureDensityError) as info:
        read()  # type: ignore[operator]
    return str(info.value)


@pytest.mark.parametrize(
    ("lines", "header", "expected"),
    [
        (["1,2,3", "4,nan,6"], "a,b,y", "line 3, column 'b': 'nan' (missing or infinite"),
        (["1,2,3", "4,inf,6"], "a,b,y", "line 3, column 'b': 'inf' (missing or infinite"),
        (["1,2,3", "4,abc,6"], "a,b,y", "line 3, column 'b': 'abc' is not a number"),
        (["1,2,3", "", "4, ,6"], "a,b,y", "line 4, column 'b': empty cell"),
        (["1,2,3", "4,5"], "a,b,y", "line 3: 2 fields, but the header has 3"),
        (["1,2,3"], "a,a,y", "column 'a' appears twice in the header"),
        (["1,2,3"], "a,,y", "the header has an empty column name"),
        ([], "a,b,y", "no data rows after the header"),
    ],
)
def test_every_path_gives_the_same_message(
    tmp_path: Path, lines: list[str], header: str, expected: str
) -> None:
    path = _file(tmp_path, lines, header)
    in_memory = _message(lambda: Table(path).numeric(["a", "b", "y"], "feature"))
    streamed = _message(lambda: scan_csv(path, ["a", "b"], ["y"], chunk_rows=1))
    assert in_memory == streamed and in_memory.startswith(path) and expected in in_memory
    if "no data rows" not in expected:  # a dataset of no rows is merely empty
        dataset = _message(lambda: list(CSVChunkDataset(path, ["a", "b"], ["y"], chunksize=1)))
        assert dataset == in_memory


def test_missing_columns_are_listed_with_the_header(tmp_path: Path) -> None:
    path = _file(tmp_path, GOOD)
    message = _message(lambda: list(CSVChunkDataset(path, ["a", "p", "q"], ["y"])))
    assert message == (
        f"{path}: feature column(s) 'p', 'q' not found (not in the header, which has: a, b, y)"
    )
    assert _message(lambda: Table(path).numeric(["z"], "target")).endswith(
        "target column(s) 'z' not found (not in the header, which has: a, b, y)"
    )


def test_byte_order_mark_and_spaces_around_names(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_text(" a , b ,y\n1,2,3\n", encoding="utf-8-sig")
    assert read_header(str(path)) == ["a", "b", "y"]
    assert Table(str(path)).header == ["a", "b", "y"]
    x, y = next(iter(CSVChunkDataset(str(path), ["a", "b"], ["y"])))
    assert x.tolist() == [1.0, 2.0] and y.tolist() == [3.0]


def test_blank_lines_are_skipped_and_still_counted(tmp_path: Path) -> None:
    path = _file(tmp_path, ["1,2,3", "", " , ,", "4,5,6", "7,x,9"])
    with pytest.raises(MixtureDensityError, match="line 6, column 'b'"):
        list(CSVChunkDataset(path, ["a", "b"], ["y"], chunksize=2))
    path = _file(tmp_path, ["1,2,3", "", " , ,", "4,5,6"])
    table = Table(path)
    assert table.lines == [2, 5]
    assert [x.tolist() for x, _ in CSVChunkDataset(path, [0, 1], [2])] == [[1, 2], [4, 5]]


def test_no_header_indices_and_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("1;2;3\n4;5;6\n")
    ds = CSVChunkDataset(str(path), [2, -3], [1], delimiter=";", header=False)
    assert [(x.tolist(), y.tolist()) for x, y in ds] == [([3, 1], [2]), ([6, 4], [5])]
    with pytest.raises(MixtureDensityError, match="column index 3 is out of range"):
        list(CSVChunkDataset(str(path), [3], [1], delimiter=";", header=False))
    with pytest.raises(MixtureDensityError, match="given by name but header=False"):
        list(CSVChunkDataset(str(path), ["a"], [1], delimiter=";", header=False))
    path.write_text("1;2;3\n4;5\n")
    with pytest.raises(MixtureDensityError, match="line 2: 2 fields, but the first row has 3"):
        list(CSVChunkDataset(str(path), [0], [1], delimiter=";", header=False))


def test_indices_with_a_header_need_no_names(tmp_path: Path) -> None:
    # A header whose names are not used (e.g. pandas' unnamed index column) is not checked.
    path = _file(tmp_path, GOOD, header=",b,y")
    assert [y.item() for _, y in CSVChunkDataset(path, [0, 1], [2])] == [3.0, 6.0, 9.0]
    with pytest.raises(MixtureDensityError, match="column index 5 is out of range"):
        list(CSVChunkDataset(path, [5], [2]))
    with pytest.raises(MixtureDensityError, match="empty column name"):
        list(CSVChunkDataset(path, ["b"], ["y"]))


def test_skip_rows_and_shards(tmp_path: Path) -> None:
    path = _file(tmp_path, [f"{i},{i},{i}" for i in range(11)])
    ds = CSVChunkDataset(path, ["a"], ["y"], chunksize=3, skip_rows=2)
    chunks = [(c, x[:, 0].tolist()) for c, x, _ in ds.iter_chunks()]
    assert chunks == [(0, [2, 3, 4]), (1, [5, 6, 7]), (2, [8, 9, 10])]
    parts = [[c for c, _, _ in ds.iter_chunks((w, 2))] for w in range(2)]
    assert parts == [[0, 2], [1]]
    with pytest.raises(ValueError, match="skip_rows"):
        CSVChunkDataset(path, ["a"], ["y"], skip_rows=-1)
    with pytest.raises(ValueError, match="batch_rows"):
        CSVChunkDataset(path, ["a"], ["y"], batch_rows=0)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_are_the_collated_rows(tmp_path: Path, shuffle: bool) -> None:
    path = _file(tmp_path, [f"{i},{-i},{i / 2}" for i in range(23)])
    kw = {"chunksize": 4, "shuffle": shuffle, "seed": 5, "dtype": torch.float64}
    rows = CSVChunkDataset(path, ["a", "b"], ["y"], **kw)  # type: ignore[arg-type]
    batched = CSVChunkDataset(path, ["a", "b"], ["y"], batch_rows=3, **kw)  # type: ignore[arg-type]
    for ds in (rows, batched):
        ds.set_epoch(1)
    expected = list(DataLoader(rows, batch_size=3))
    got = list(batched)
    assert [len(x) for x, _ in got] == [3] * 7 + [2]
    for (xa, ya), (xb, yb) in zip(got, expected):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_numbers_are_parsed_like_python(tmp_path: Path) -> None:
    path = _file(tmp_path, [" 1.5 ,1e3,-0", "1_000,2,3"])
    np.testing.assert_array_equal(
        Table(path).numeric(["a", "b", "y"], "x"), [[1.5, 1e3, -0.0], [1000.0, 2.0, 3.0]]
    )


def test_write_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.csv"
    write_csv(str(out), ["p", "q"], np.array([[0.1, 2.0]]))
    assert out.read_text() == "p,q\n0.1,2.0\n"
    write_csv(None, ["p"], np.array([[1.0]]))
    assert capsys.readouterr().out == "p\n1.0\n"
