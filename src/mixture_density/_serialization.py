"""A pickle-free, checksummed single-file format for fitted models (private).

A model file holds a JSON configuration string, a flat ``name -> tensor`` mapping and the
SHA-256 of both. Two containers are supported; :func:`read_checkpoint` tells them apart by
their first bytes:

* a torch file (``torch.save`` of a dict of strings and tensors, the default): read back
  with ``torch.load(weights_only=True)``, which refuses to run pickled code;
* a safetensors file (when the path ends in ``.safetensors``; needs the optional
  ``safetensors`` package): the configuration and the checksum go in the header metadata.

Reading verifies the checksum, so a flipped byte, a truncated copy or an edited
configuration is reported as a corrupted file instead of loading different numbers. Files
written before checksums existed (no ``sha256`` entry) are read unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._errors import MixtureDensityError
from ._files import atomic_path

__all__ = ["content_digest", "read_checkpoint", "write_checkpoint"]

#: Tag stored in every checkpoint so that other files are rejected with a clear message.
FORMAT_TAG = "mixture-density-checkpoint"
_ZIP_MAGIC = b"PK"  # torch.save writes a zip archive
#: What to do about a damaged model file (every such message ends with it).
_REMEDY = "write it again with 'mdn fit' or MDNRegressor.save"


def content_digest(config_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a configuration and of every tensor's name, dtype, shape and bytes.

    Tensors are taken in sorted name order, so the digest does not depend on the order of
    the mapping.

    Example:
        >>> content_digest("{}", {"w": torch.zeros(2)}) == content_digest("{}", {"w": torch.zeros(2)})
        True
        >>> content_digest("{}", {"w": torch.zeros(2)}) == content_digest("{}", {"w": torch.ones(2)})
        False
    """  # noqa: E501
    digest = hashlib.sha256(config_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the bytes, no copy
    return digest.hexdigest()


def write_checkpoint(
    path: str | os.PathLike[str], config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Write ``config`` (JSON-serializable) and ``tensors`` to one file, atomically.

    The file is complete and on disk (``_files.atomic_path``) before it replaces ``path``,
    and it carries the :func:`content_digest` of what it holds.

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
    checksum = content_digest(config_json, flat)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError as err:  # pragma: no cover - optional dependency
                raise MixtureDensityError(
                    f"saving to {str(path)!r} needs the optional 'safetensors' package "
                    "(pip install safetensors), or use another file suffix"
                ) from err
            metadata = {"format": FORMAT_TAG, "config": config_json, "sha256": checksum}
            save_file(flat, str(tmp), metadata=metadata)
        else:
            payload = {"format": FORMAT_TAG, "config": config_json, "tensors": flat}
            torch.save({**payload, "sha256": checksum}, tmp)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a file written by :func:`write_checkpoint` without executing pickled code.

    Returns:
        ``(config, tensors)`` with all tensors on the CPU.

    Raises:
        OSError: The file cannot be opened.
        MixtureDensityError: The file is not a model file of this library, or it is
            truncated or corrupted (its checksum does not match).
    """
    path = Path(path)
    name = repr(str(path))
    with open(path, "rb") as fh:
        head = fh.read(9)
    if not head:
        raise MixtureDensityError(f"model file {name} is empty; {_REMEDY}")
    if head.startswith(_ZIP_MAGIC):
        config_json, tensors, checksum = _read_torch(path, name)
    elif len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        config_json, tensors, checksum = _read_safetensors(path, name)
    else:
        raise MixtureDensityError(f"{name} is not a mixture-density model file")
    if checksum is not None and checksum != content_digest(config_json, tensors):
        raise MixtureDensityError(
            f"model file {name} is corrupted: its contents do not match the checksum stored "
            f"in it; {_REMEDY}"
        )
    try:
        config = json.loads(config_json)
    except json.JSONDecodeError:
        config = None
    if not isinstance(config, dict):
        raise MixtureDensityError(f"model file {name} has a corrupt configuration; {_REMEDY}")
    return config, tensors


def _read_torch(path: Path, name: str) -> tuple[str, dict[str, torch.Tensor], str | None]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused a Python object: no model file holds one. torch's own message
        # suggests loading without that protection, which is exactly what must not be done.
        raise MixtureDensityError(
            f"{name} is not a mixture-density model file: it holds Python objects that a "
            "model file never contains (refused without running them)"
        ) from None
    except Exception:  # truncated or damaged archive: torch raises several types
        raise MixtureDensityError(
            f"model file {name} is truncated or corrupted (its archive cannot be read); {_REMEDY}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise MixtureDensityError(f"{name} is not a mixture-density model file")
    config_json, tensors = payload.get("config"), payload.get("tensors")
    checksum = payload.get("sha256")
    if (
        not isinstance(config_json, str)
        or not isinstance(tensors, dict)
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items())
        or not (checksum is None or isinstance(checksum, str))
    ):
        raise MixtureDensityError(f"model file {name} is corrupted (entries missing); {_REMEDY}")
    return config_json, dict(tensors), checksum


def _read_safetensors(path: Path, name: str) -> tuple[str, dict[str, torch.Tensor], str | None]:
    try:
        from safetensors import safe_open
    except ImportError as err:  # pragma: no cover - optional dependency
        raise MixtureDensityError(
            f"reading {name} needs the optional 'safetensors' package (pip install safetensors)"
        ) from err
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    except Exception:  # safetensors raises its own error types
        raise MixtureDensityError(
            f"model file {name} is truncated or corrupted (not a readable safetensors file); "
            f"{_REMEDY}"
        ) from None
    if metadata.get("format") != FORMAT_TAG:
        raise MixtureDensityError(f"{name} is not a mixture-density model file")
    if "config" not in metadata:
        raise MixtureDensityError(f"model file {name} is corrupted (entries missing); {_REMEDY}")
    return metadata["config"], tensors, metadata.get("sha256")
