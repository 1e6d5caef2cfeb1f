"""CSV files of numbers: the one reader (and writer) of the library (private).

Every CSV file is read here, with the same rules and the same messages: by the ``mdn``
command in memory (:class:`Table`), by streamed fits and by the public
:class:`CSVChunkDataset` (chunk by chunk, sharded over ranks and DataLoader workers).

* The header: a UTF-8 byte-order mark before it is ignored and names are stripped; names that
  columns are selected by must be unique and non-empty (:func:`check_names`).
* Rows: blank lines are skipped; every other row must have the header's number of fields
  (the first row's without a header); errors name the line of the file (:attr:`csv.reader.line_num`,
  so quoted fields that span lines do not shift the count).
* Cells: finite numbers of magnitude at most ``MAX_ABS_VALUE``; an empty cell, text, a
  missing or infinite value or a huge one is an error naming the line and the column
  (:func:`to_floats`).
* The file: text that is not UTF-8, or a field longer than ``csv.field_size_limit()`` (131,072
  characters: no number is that long), is an error naming the file and the line.
"""

from __future__ import annotations

import csv
import itertools
import math
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import IO

import numpy as np
import torch
from torch.utils.data import IterableDataset

from . import _env
from ._errors import MixtureDensityError
from ._files import atomic_path

__all__ = [
    "CSVChunkDataset",
    "ChunkTransform",
    "Table",
    "check_names",
    "column_indices",
    "read_header",
    "to_floats",
    "write_csv",
]

#: A UTF-8 byte-order mark (as written by spreadsheet programs) is not part of the first name.
ENCODING = "utf-8-sig"

#: Largest magnitude of a cell. Standardizing sums squared deviations in float64 (largest
#: finite value 1.8e308): with every value below 1e150 the squares stay below 1e300, and a
#: sum of 10^8 of them below the largest float. Real measurements are far smaller.
MAX_ABS_VALUE = 1e150
#: A cell quoted in a message is cut to this many characters.
_SHOWN_CHARS = 40

#: ``(x (m, d), y (m, D)) -> (x', y')`` applied by :class:`CSVChunkDataset` to each chunk.
ChunkTransform = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]


class _Rows:
    """The data rows of an open CSV file, as ``(line number, fields)``.

    Reads the header (when there is one) at construction; iterating skips blank lines (no
    field, or only blank ones) and refuses a row whose number of fields differs from the
    header's, or without a header from the first row's.
    """

    def __init__(self, handle: IO[str], path: str, *, delimiter: str, header: bool) -> None:
        self.path = path
        self._reader = csv.reader(handle, delimiter=delimiter)
        #: The stripped names of the header row (not checked: see :func:`check_names`).
        self.header: list[str] | None = None
        if header:
            row = self._next()
            if row is None:
                raise MixtureDensityError(f"{path}: empty file, expected a header row")
            self.header = [name.strip() for name in row]

    def _next(self) -> list[str] | None:
        """The next row of the file (None at its end), with its errors named by line."""
        try:
            return next(self._reader, None)
        except UnicodeDecodeError as err:
            raise MixtureDensityError(
                f"{self.path} is not UTF-8 text (byte {err.object[err.start : err.start + 1]!r} "
                f"after line {self._reader.line_num}); save it as UTF-8"
            ) from None
        except csv.Error as err:  # e.g. a field longer than csv.field_size_limit()
            raise MixtureDensityError(
                f"{self.path} line {self._reader.line_num}: cannot read it as CSV ({err})"
            ) from None

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        reader = self._reader
        n_fields = None if self.header is None else len(self.header)
        while (row := self._next()) is not None:
            # The full blank test runs only on rows that start with a blank field.
            if (not row or not row[0].strip()) and not any(cell.strip() for cell in row):
                continue
            if len(row) != n_fields:
                if n_fields is not None:
                    expected = "the header has" if self.header is not None else "the first row has"
                    raise MixtureDensityError(
                        f"{self.path} line {reader.line_num}: {len(row)} fields, but {expected} "
                        f"{n_fields}"
                    )
                n_fields = len(row)
            yield reader.line_num, row


def check_names(path: str, header: Sequence[str]) -> list[str]:
    """``header`` as a list, if every name is non-empty and appears once.

    Raises:
        MixtureDensityError: an empty or a repeated name.
    """
    seen: set[str] = set()
    for name in header:
        if not name:
            raise MixtureDensityError(f"{path}: the header has an empty column name")
        if name in seen:
            raise MixtureDensityError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)
    return list(header)


def read_header(path: str, delimiter: str = ",") -> list[str]:
    """The checked column names of a CSV file, without reading its rows.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
        >>> _ = open(path, "w", encoding="utf-8-sig").write(" a , b\\n1,2\\n")
        >>> read_header(path)
        ['a', 'b']
    """
    with open(path, newline="", encoding=ENCODING) as handle:
        header = _Rows(handle, path, delimiter=delimiter, header=True).header
    assert header is not None  # header=True reads one or raises
    return check_names(path, header)


def column_indices(
    path: str, header: Sequence[str] | None, columns: Sequence[str | int], what: str
) -> list[int]:
    """Positions of ``columns`` (names, or 0-based indices) in the rows of a file.

    Args:
        path: the file, for messages.
        header: its column names, or ``None`` for a file without a header.
        columns: names (need a header) or indices.
        what: what the columns are (``"feature"``, ``"target"``), for messages.

    Raises:
        MixtureDensityError: a name that is not in the header (all of them listed, with the
            header's names), a name without a header, or an index out of range.

    Example:
        >>> column_indices("d.csv", ["a", "b", "c"], ["c", 0], "feature")
        [2, 0]
        >>> column_indices("d.csv", ["a", "b"], ["x", "y"], "target")
        Traceback (most recent call last):
        ...
        mixture_density._errors.MixtureDensityError: d.csv: target column(s) 'x', 'y' not found (not in the header, which has: a, b)
    """  # noqa: E501
    indices: list[int] = []
    missing: list[str] = []
    for col in columns:
        if isinstance(col, str):
            if header is None:
                raise MixtureDensityError(
                    f"{path}: {what} column {col!r} given by name but header=False; use indices"
                )
            if col in header:
                indices.append(list(header).index(col))
            else:
                missing.append(col)
        elif header is not None and not -len(header) <= col < len(header):
            raise MixtureDensityError(
                f"{path}: {what} column index {col} is out of range: the header has "
                f"{len(header)} columns"
            )
        else:
            indices.append(int(col))
    if missing:
        raise MixtureDensityError(
            f"{path}: {what} column(s) {', '.join(map(repr, missing))} not found "
            f"(not in the header, which has: {', '.join(header or [])})"
        )
    return indices


def to_floats(
    path: str,
    rows: list[list[str]],
    lines: Sequence[int],
    names: Sequence[str | int],
    *,
    missing: bool = False,
    infinite: bool = False,
) -> np.ndarray:
    """``(m, p)`` float64 array of text cells; every cell must be a finite number.

    Args:
        path: the file, for messages.
        rows: ``m`` rows of ``p`` cells.
        lines: the line of the file of every row.
        names: the name (or index) of every column.
        missing: read empty, ``nan`` and ``NA`` cells as NaN instead of refusing them.
        infinite: accept ``inf`` and ``-inf``.

    Raises:
        MixtureDensityError: naming the line and column of the first bad cell: empty, not a
            number, or missing or infinite (``nan``, ``inf``).

    Example:
        >>> to_floats("d.csv", [["1", " 2.5"]], [2], ["a", "b"]).tolist()
        [[1.0, 2.5]]
        >>> to_floats("d.csv", [["1", "2"], ["3", "nan"]], [2, 3], ["a", "b"])
        Traceback (most recent call last):
        ...
        mixture_density._errors.MixtureDensityError: d.csv line 3, column 'b': 'nan' (missing or infinite values are not supported; drop or impute the row)
    """  # noqa: E501
    if missing:
        rows = [[_MISSING_TEXT.get(c.strip().lower(), c) for c in row] for row in rows]
    try:
        arr = np.array(rows, dtype=np.float64)  # (m, p)
    except ValueError:
        arr = None
    if arr is not None:
        ok = np.abs(arr) <= MAX_ABS_VALUE  # NaN fails it too
        if missing or infinite:
            ok |= (missing & np.isnan(arr)) | (infinite & np.isinf(arr))
        if bool(ok.all()):
            return arr
    # Rare: find the first bad cell and name it (or, if Python reads every cell that numpy
    # would not, e.g. "1_000" in older numpy, use Python's numbers).
    for row, line in zip(rows, lines):
        for cell, name in zip(row, names):
            where = f"{path} line {line}, column {name!r}"
            try:
                value = float(cell)
            except ValueError:
                problem = "empty cell" if not cell.strip() else f"{_shown(cell)} is not a number"
                raise MixtureDensityError(f"{where}: {problem}") from None
            if (missing and math.isnan(value)) or (infinite and math.isinf(value)):
                continue
            if not math.isfinite(value):
                raise MixtureDensityError(
                    f"{where}: {_shown(cell)} (missing or infinite values are not supported; "
                    "drop or impute the row)"
                )
            if abs(value) > MAX_ABS_VALUE:
                raise MixtureDensityError(
                    f"{where}: {_shown(cell)} is too large (magnitudes above {MAX_ABS_VALUE:g} "
                    "overflow when squared for the standardization; rescale the column)"
                )
    return np.array([[float(cell) for cell in row] for row in rows], dtype=np.float64)


#: Cells read as NaN by ``to_floats(..., missing=True)`` (lower case, stripped).
_MISSING_TEXT = {"": "nan", "na": "nan", "nan": "nan"}


def _shown(cell: str) -> str:
    """``repr`` of a cell for a message, cut short when the cell is long."""
    if len(cell) <= _SHOWN_CHARS:
        return repr(cell)
    return f"{cell[:_SHOWN_CHARS]!r}... ({len(cell)} characters)"


class Table:
    """A whole CSV file with a header, read as text: the ``mdn`` command's in-memory reader.

    Attributes:
        path: the file.
        header: its (checked) column names.
        lines: the line of the file of every data row.
        rows: the data rows, as text cells.

    Raises:
        MixtureDensityError: a bad header, a row with the wrong number of fields, or no rows.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
        >>> _ = open(path, "w").write("a,b\\n1,2\\n\\n3,4\\n")
        >>> table = Table(path)
        >>> table.lines, table.numeric(["b"], "target").tolist()
        ([2, 4], [[2.0], [4.0]])
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, newline="", encoding=ENCODING) as handle:
            rows = _Rows(handle, path, delimiter=",", header=True)
            assert rows.header is not None  # header=True reads one or raises
            self.header = check_names(path, rows.header)
            self.lines: list[int] = []
            self.rows: list[list[str]] = []
            for line, row in rows:
                self.lines.append(line)
                self.rows.append(row)
        if not self.rows:
            raise MixtureDensityError(f"{path}: no data rows after the header")

    def numeric(
        self, names: Sequence[str], what: str, *, missing: bool = False, infinite: bool = False
    ) -> np.ndarray:
        """``(n_rows, len(names))`` float64 array of the named columns (finite numbers; NaN
        for missing cells with ``missing``, and infinities with ``infinite``)."""
        index = column_indices(self.path, self.header, names, what)
        cells = [[row[i] for i in index] for row in self.rows]
        return to_floats(self.path, cells, self.lines, names, missing=missing, infinite=infinite)


def write_csv(path: str | None, header: Sequence[str], rows: np.ndarray) -> None:
    """Write a header and rows of numbers (``repr`` of each float) atomically, or to stdout.

    Example:
        >>> write_csv(None, ["a", "b"], np.array([[1.0, 0.1]]))
        a,b
        1.0,0.1
    """

    def write(handle: IO[str]) -> None:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[repr(float(v)) for v in row] for row in rows])

    if path is None:
        write(sys.stdout)
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        write(handle)


class CSVChunkDataset(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Streams ``(x, y)`` rows from a CSV file that need not fit in memory.

    The file is read sequentially with the standard-library :mod:`csv` module, ``chunksize``
    rows at a time. Chunk ``i`` belongs to global worker ``i mod W``, where ``W`` counts the
    DDP ranks times the DataLoader workers, so each row is seen by exactly one worker per epoch
    (every worker still scans the whole file, but converts only its own chunks). With
    ``shuffle=True`` rows are permuted within each chunk by a generator seeded from
    ``(seed, epoch, chunk)``; call :meth:`set_epoch` (``fit`` does) for a new order each epoch.

    The file is read with the rules of the ``mdn`` command: a UTF-8 byte-order mark is
    ignored, names are stripped (and must be unique and non-empty when columns are selected by
    name), blank lines are skipped, and a row with another number of fields than the header (or
    the first row) or a cell that is not a finite number is an error naming its line.

    Args:
        path: CSV file.
        feature_cols: column names (needs a header) or 0-based indices of the inputs ``x``.
        target_cols: column names or indices of the targets ``y``.
        chunksize: rows per chunk.
        delimiter: field separator.
        header: whether the first line holds column names.
        shuffle: permute rows within each chunk.
        seed: seed of the within-chunk shuffle.
        dtype: dtype of the yielded tensors.
        transform: optional ``(x (m, d), y (m, D)) -> (x, y)`` applied to each float64 chunk
            before conversion, e.g. :meth:`Moments.standardize` of a first
            :func:`streaming_moments` pass, since :func:`~mixture_density.training.fit`
            expects standardized data. :meth:`iter_chunks` returns untransformed chunks.
        skip_rows: leave out the first ``skip_rows`` data rows (e.g. a validation set held
            in memory); chunks start after them.
        batch_rows: yield batches ``(x (B, d), y (B, D))`` of this many rows instead of single
            rows: exactly what ``DataLoader(rows, batch_size=batch_rows)`` would collate
            (batches run across chunk boundaries; the last may be smaller), without cutting
            each chunk into row tensors first. Wrap in ``DataLoader(ds, batch_size=None)``.

    Yields:
        ``(x (d,), y (D,))`` float tensors, one row at a time (wrap in a ``DataLoader`` with
        ``batch_size`` to batch them), or batches with ``batch_rows``.

    Example:
        >>> import tempfile, os
        >>> from mixture_density import streaming_moments
        >>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
        >>> _ = open(path, "w").write("a,b,t\\n1,2,3\\n4,5,6\\n")
        >>> ds = CSVChunkDataset(path, ["a", "b"], ["t"], chunksize=1)
        >>> [tuple(x.tolist()) for x, _ in ds]
        [(1.0, 2.0), (4.0, 5.0)]
        >>> scaled = CSVChunkDataset(path, ["a", "b"], ["t"],
        ...                          transform=streaming_moments(ds).standardize)
        >>> [y.item() for _, y in scaled]
        [-1.0, 1.0]
        >>> [x.shape for x, _ in CSVChunkDataset(path, [0, 1], [2], batch_rows=2)]
        [torch.Size([2, 2])]
    """

    def __init__(
        self,
        path: str,
        feature_cols: Sequence[str | int],
        target_cols: Sequence[str | int],
        chunksize: int = 10_000,
        *,
        delimiter: str = ",",
        header: bool = True,
        shuffle: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        transform: ChunkTransform | None = None,
        skip_rows: int = 0,
        batch_rows: int | None = None,
    ) -> None:
        super().__init__()
        if chunksize < 1:
            raise ValueError(f"chunksize must be a positive integer, got {chunksize}")
        if not feature_cols or not target_cols:
            raise ValueError("feature_cols and target_cols must each name at least one column")
        if skip_rows < 0:
            raise ValueError(f"skip_rows must be >= 0, got {skip_rows}")
        if batch_rows is not None and batch_rows < 1:
            raise ValueError(f"batch_rows must be a positive integer or None, got {batch_rows}")
        self.path = str(path)
        self.feature_cols = list(feature_cols)
        self.target_cols = list(target_cols)
        self.chunksize = chunksize
        self.delimiter = delimiter
        self.header = header
        self.shuffle = shuffle
        self.seed = seed
        self.dtype = dtype
        self.transform = transform
        self.skip_rows = skip_rows
        self.batch_rows = batch_rows
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that seeds the within-chunk shuffle."""
        self.epoch = epoch

    def iter_chunks(
        self, shard: tuple[int, int] = (0, 1)
    ) -> Generator[tuple[int, np.ndarray, np.ndarray], None, None]:
        """Yields ``(chunk index, x (m, d), y (m, D))`` as float64 numpy arrays.

        Chunks count from the first row after ``skip_rows``.

        Args:
            shard: ``(worker, n_workers)``; the default reads every chunk.
        """
        worker, n_workers = shard
        with open(self.path, newline="", encoding=ENCODING) as handle:
            rows = _Rows(handle, self.path, delimiter=self.delimiter, header=self.header)
            header = rows.header
            if header is not None and not all(
                isinstance(c, int) for c in (*self.feature_cols, *self.target_cols)
            ):
                header = check_names(self.path, header)
            cols = column_indices(self.path, header, self.feature_cols, "feature")
            d = len(cols)
            cols += column_indices(self.path, header, self.target_cols, "target")
            names: list[str | int] = [c if header is None else header[c] for c in cols]
            size, chunk, count = self.chunksize, 0, 0
            mine = chunk % n_workers == worker
            text: list[list[str]] = []  # this worker's rows of the current chunk
            lines: list[int] = []  # their lines in the file, for error messages
            try:
                for line, row in itertools.islice(rows, self.skip_rows, None):
                    # Other workers' chunks are counted but not converted.
                    if mine:
                        text.append([row[i] for i in cols])
                        lines.append(line)
                    count += 1
                    if count == size:
                        if mine:
                            arr = to_floats(self.path, text, lines, names)
                            yield chunk, arr[:, :d], arr[:, d:]
                        text, lines, count, chunk = [], [], 0, chunk + 1
                        mine = chunk % n_workers == worker
            except IndexError:  # without a header, only the rows say how many columns exist
                bad = [c for c in cols if not -len(row) <= c < len(row)]
                raise MixtureDensityError(
                    f"{self.path}: column index {bad[0]} is out of range: the rows have "
                    f"{len(row)} fields"
                ) from None
            if count and mine:
                arr = to_floats(self.path, text, lines, names)
                yield chunk, arr[:, :d], arr[:, d:]

    def _tensor_chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This worker's chunks, transformed, converted and shuffled: ``(x (m, d), y (m, D))``."""
        for chunk, x, y in self.iter_chunks(_env.shard()):
            if self.transform is not None:
                x, y = self.transform(x, y)
            xt = torch.as_tensor(x, dtype=self.dtype)
            yt = torch.as_tensor(y, dtype=self.dtype)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch, chunk])
                perm = torch.as_tensor(rng.permutation(xt.shape[0]))
                xt, yt = xt[perm], yt[perm]
            yield xt, yt

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.batch_rows is None:
            for xt, yt in self._tensor_chunks():
                yield from zip(xt, yt)
            return
        # Batches cut from the chunks (and across them) directly: cutting each chunk into
        # row tensors and collating them again costs more than parsing the text.
        size = self.batch_rows
        carry: tuple[torch.Tensor, torch.Tensor] | None = None  # the rows of a partial batch
        for xt, yt in self._tensor_chunks():
            if carry is not None:
                xt, yt = torch.cat([carry[0], xt]), torch.cat([carry[1], yt])
            full = xt.shape[0] - xt.shape[0] % size
            for start in range(0, full, size):
                yield xt[start : start + size], yt[start : start + size]
            carry = (xt[full:], yt[full:]) if full < xt.shape[0] else None
        if carry is not None:
            yield carry
