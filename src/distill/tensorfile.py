"""safetensors files and blobs, written byte-reproducibly and read with errors that name the file.

The safetensors library writes its ``__metadata__`` map in no fixed order (a hash map), so two
writes of equal tensors and equal metadata can differ in bytes, which defeats content hashes,
deduplication and caches. :func:`dumps` rewrites the header with the metadata keys sorted; the
tensor entries and the data section are already in a fixed order (by dtype alignment, then name).

:func:`load` turns the library's bare ``SafetensorError`` (a truncated download, a file cut short
by a full disk, a file of another format) into an :class:`UnreadableFileError` naming the file,
what it was expected to be and how to get a good copy.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as _st_save

from distill.io import atomic_path

_HEADER_LENGTH = struct.Struct("<Q")


class UnreadableFileError(ValueError):
    """A file exists but cannot be read as what it should be (truncated, corrupt, another format)."""


def canonical(blob: bytes) -> bytes:
    """``blob`` with its header's metadata keys in sorted order (same length, same tensors, same data)."""
    (length,) = _HEADER_LENGTH.unpack(blob[:8])
    header = json.loads(blob[8 : 8 + length])
    ordered: dict[str, object] = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered |= header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > length:  # cannot happen for a permutation of the same entries; keep the original
        return blob
    return blob[:8] + text + b" " * (length - len(text)) + blob[8 + length :]


def dumps(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors blob of ``tensors`` whose bytes depend only on the tensors and the metadata."""
    blob = _st_save(
        {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()},
        metadata=None if metadata is None else dict(metadata),
    )
    return canonical(blob)


def save(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write :func:`dumps` of ``tensors`` to ``path`` atomically."""
    blob = dumps(tensors, metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


def load(path: str | Path, what: str, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a missing file is FileNotFoundError, a bad one
    :class:`UnreadableFileError` with ``what`` the file should be and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; {fix}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (no __iter__)
    except Exception as exc:  # the library raises its own SafetensorError (and OSError on I/O)
        raise UnreadableFileError(
            f"{path} ({path.stat().st_size} bytes) is not a readable {what}: it is truncated, corrupt or "
            f"not a safetensors file ({type(exc).__name__}: {exc}); {fix}"
        ) from exc
    return tensors, metadata
