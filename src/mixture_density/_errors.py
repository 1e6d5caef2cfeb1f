"""The package exception."""

from __future__ import annotations

__all__ = ["MixtureDensityError"]


class MixtureDensityError(ValueError):
    """Invalid user input: a bad file, column, model file or argument.

    A subclass of :class:`ValueError`, so code that catches ``ValueError`` keeps working.
    The ``mdn`` command turns it into a one-line message and exit status 2.

    Example:
        >>> try:
        ...     raise MixtureDensityError("column 'x' is missing")
        ... except ValueError as err:
        ...     print(err)
        column 'x' is missing
    """
