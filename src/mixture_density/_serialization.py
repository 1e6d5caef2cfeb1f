"""A pickle-free single-file checkpoint format for fitted models.

A checkpoint holds a JSON configuration string and a flat ``name -> tensor`` mapping.
Two containers are supported; :func:`read_checkpoint` tells them apart by their first bytes:

* a torch file (``torch.save`` of a dict of strings and tensors, the default): read back
  with ``torch.load(weights_only=True)``, which refuses to run pickled code;
* a safetensors file (when the path ends in ``.safetensors``; needs the optional
  ``safetensors`` package): the configuration goes in the header metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._errors import MixtureDensityError
from ._files import atomic_path

__all__ = ["read_checkpoint", "write_checkpoint"]

#: Tag stored in every checkpoint so that other files are rejected with a clear message.
FORMAT_TAG = "mixture-density-checkpoint"
_ZIP_MAGIC = b"PK"  # torch.save writes a zip archive


def write_checkpoint(
    path: str | os.PathLike[str], config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Write ``config`` (JSON-serializable) and ``tensors`` to one file, atomically.

    The file is complete and on disk (``_files.atomic_path``) before it replaces ``path``.

    Args:
        path: Destination. A ``.safetensors`` suffix selects the safetensors container.
        config: JSON-serializable mapping (NaN is not allowed: store ``None`` instead).
        tensors: Flat mapping from names to tensors; they are copied to contiguous CPU
            memory first.
    """
    path = Path(path)
    config_json = json.dumps(dict(config), allow_nan=False, sort_keys=True)
    # Contiguous, non-shared CPU copies: safetensors refuses shared storage, and neither
    # container should depend on the device the model was trained on.
    flat = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError as err:  # pragma: no cover - optional dependency
                raise MixtureDensityError(
                    f"saving to {str(path)!r} needs the optional 'safetensors' package "
                    "(pip install safetensors), or use another file suffix"
                ) from err
            save_file(flat, str(tmp), metadata={"format": FORMAT_TAG, "config": config_json})
        else:
            torch.save({"format": FORMAT_TAG, "config": config_json, "tensors": flat}, tmp)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a file written by :func:`write_checkpoint` without executing pickled code.

    Returns:
        ``(config, tensors)`` with all tensors on the CPU.

    Raises:
        OSError: The file cannot be read.
        MixtureDensityError: The file is not a checkpoint of this library.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(_ZIP_MAGIC):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for foreign pickles
            raise MixtureDensityError(
                f"{str(path)!r} is not a mixture-density model file: {err}"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
            raise MixtureDensityError(f"{str(path)!r} is not a mixture-density model file")
        config_json, tensors = payload["config"], dict(payload["tensors"])
    elif len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        try:
            from safetensors import safe_open
        except ImportError as err:  # pragma: no cover - optional dependency
            raise MixtureDensityError(
                f"reading {str(path)!r} needs the optional 'safetensors' package "
                "(pip install safetensors)"
            ) from err
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                metadata = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors raises its own error type
            raise MixtureDensityError(
                f"{str(path)!r} is not a readable safetensors file: {err}"
            ) from None
        if metadata.get("format") != FORMAT_TAG:
            raise MixtureDensityError(f"{str(path)!r} is not a mixture-density model file")
        config_json = metadata["config"]
    else:
        raise MixtureDensityError(f"{str(path)!r} is not a mixture-density model file")
    try:
        config = json.loads(config_json)
    except json.JSONDecodeError as err:
        raise MixtureDensityError(f"{str(path)!r} has a corrupt configuration: {err}") from err
    return config, tensors
