"""One sample's teacher features as a safetensors blob: ``<key>.<teacher>.safetensors``.

Tensors per blob (see docs/dataset_format.md):

* ``patch``: ``[h, w, C]`` in the storage dtype (``float16``, ``bfloat16`` or ``int8``);
* ``patch_scale``: ``[C]`` float32, int8 storage only: per-sample, per-channel absmax / 127,
  so ``patch_float = patch_int8 * patch_scale``;
* ``cls``: ``[C_cls]`` when the teacher has a summary vector (``float16`` under int8 storage,
  it is a few bytes next to the grid, else the storage dtype);
* ``outlier_index`` ``[K]`` int32 and ``outlier_patch`` ``[K, C]`` float16, int8 storage with
  ``K > 0`` outlier tokens only: the K tokens of highest norm (raster index, ascending) kept in
  float16, their int8 rows zero. The per-channel scales are taken over the other tokens, so one
  high-norm artifact token (CLIP-L, DINOv2 without registers) cannot coarsen every channel it
  touches for the whole sample.

Metadata (``__metadata__``): ``format``, ``version``, ``key``, ``teacher``, ``storage`` (and
``outlier_tokens`` when K > 0). Readers check the key inside the blob against the tar member
name, a second guard against misalignment. Blobs are byte-reproducible (``distill.tensorfile``).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load

from distill.tensorfile import dumps as st_save

StorageDtype = Literal["fp16", "bf16", "int8"]
STORAGE_DTYPES: tuple[StorageDtype, ...] = ("fp16", "bf16", "int8")
FEATURE_FORMAT = "distill-features"
FEATURE_VERSION = "1"
FP16_MAX = 65504.0
INT8_LEVELS = 127
Blob = bytes | bytearray | memoryview  # a safetensors blob as read, copied or viewed
_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}


def check_storage(value: str) -> StorageDtype:
    if value not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {value!r}; use one of {', '.join(STORAGE_DTYPES)}")
    return cast(StorageDtype, value)


@dataclass
class SampleFeatures:
    """Features of one sample, dequantised to float32."""

    key: str
    teacher: str
    storage: StorageDtype
    patch: torch.Tensor  # [h, w, C] float32
    cls: torch.Tensor | None  # [C_cls] float32


def area_downsample(patch: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w, C]`` -> ``[B, gh, gw, C]``, each output token the mean of the input tokens it covers."""
    if tuple(patch.shape[1:3]) == grid:
        return patch
    if grid[0] > patch.shape[1] or grid[1] > patch.shape[2]:
        raise ValueError(
            f"stored grid {grid} is larger than the teacher grid {tuple(patch.shape[1:3])}; it can only shrink"
        )
    pooled = F.adaptive_avg_pool2d(patch.permute(0, 3, 1, 2).float(), grid)
    return pooled.permute(0, 2, 3, 1).contiguous()


def outlier_tokens_of(patch: torch.Tensor, count: int) -> torch.Tensor:
    """``[B, h, w, C]`` -> ``[B, count]`` raster indices of each sample's highest-norm tokens, ascending."""
    flat = patch.float().reshape(patch.shape[0], -1, patch.shape[-1])
    if not 0 <= count < flat.shape[1]:
        raise ValueError(
            f"outlier_tokens={count} must be in [0, {flat.shape[1]}) for a {tuple(patch.shape[1:3])} grid"
        )
    top = flat.norm(dim=-1).topk(count, dim=1).indices
    return top.sort(dim=1).values


def quantize_int8(
    patch: torch.Tensor, outliers: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, h, w, C]`` float -> int8 values and per-sample per-channel scales ``[B, C]`` (float32).

    ``outliers`` (``[B, K]`` raster indices) are left out of the scales and stored as 0 (they are
    kept in float16 beside the grid).
    """
    x = patch.float()
    if outliers is not None and outliers.shape[1]:
        keep = torch.ones(x.shape[0], x.shape[1] * x.shape[2], dtype=torch.bool, device=x.device)
        keep.scatter_(1, outliers, False)
        x = x * keep.view(x.shape[0], x.shape[1], x.shape[2], 1)
    scale = x.abs().amax(dim=(1, 2)) / INT8_LEVELS  # [B, C]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / safe[:, None, None, :]).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return q, scale


def _cast_float(x: torch.Tensor, storage: StorageDtype, what: str) -> torch.Tensor:
    dtype = torch.float16 if storage == "int8" else _TORCH_DTYPES[storage]
    if dtype == torch.float16 and x.numel() and float(x.abs().max()) > FP16_MAX:
        raise ValueError(
            f"{what}: values up to {float(x.abs().max()):.4g} overflow float16; store this teacher as bf16 or int8"
        )
    return x.to(dtype)


def encode_batch(
    keys: list[str],
    teacher: str,
    patch: torch.Tensor,
    cls: torch.Tensor | None,
    storage: StorageDtype,
    outlier_tokens: int = 0,
) -> list[bytes]:
    """A batch of float features -> one safetensors blob per sample, in ``keys`` order.

    Checks and quantisation run on the features' own device; only the stored values move to CPU.
    ``outlier_tokens`` (int8 only): how many highest-norm tokens per sample to keep in float16.
    """
    check_storage(storage)
    if outlier_tokens and storage != "int8":
        raise ValueError(f"teacher {teacher!r}: outlier tokens apply to int8 storage, not {storage}")
    if patch.shape[0] != len(keys) or (cls is not None and cls.shape[0] != len(keys)):
        raise ValueError(
            f"teacher {teacher!r}: {len(keys)} keys for a batch of {patch.shape[0]} feature rows"
        )
    patch, cls = patch.detach(), None if cls is None else cls.detach()
    for name, tensor in (("patch", patch), ("cls", cls)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor.reshape(len(keys), -1))).any(1).nonzero()[0])
            raise ValueError(f"teacher {teacher!r} produced non-finite {name} features for key {keys[bad]!r}")
    what = f"teacher {teacher!r}"
    index = outlier_values = None
    if storage == "int8":
        if outlier_tokens:
            index = outlier_tokens_of(patch, outlier_tokens)
            flat = patch.reshape(patch.shape[0], -1, patch.shape[-1])
            rows = flat.gather(1, index[:, :, None].expand(-1, -1, flat.shape[-1]))
            outlier_values = _cast_float(rows, "fp16", f"{what} outlier tokens").cpu()
            index = index.to(torch.int32).cpu()
        values, scales = quantize_int8(patch, None if index is None else index.to(patch.device, torch.int64))
    else:
        values, scales = _cast_float(patch, storage, what), None
    cls_stored = None if cls is None else _cast_float(cls, storage, what).cpu()
    values, scales = values.cpu(), None if scales is None else scales.cpu()
    blobs = []
    for i, key in enumerate(keys):
        tensors = {"patch": values[i].contiguous()}
        if scales is not None:
            tensors["patch_scale"] = scales[i].contiguous()
        if cls_stored is not None:
            tensors["cls"] = cls_stored[i].contiguous()
        metadata = {
            "format": FEATURE_FORMAT,
            "version": FEATURE_VERSION,
            "key": key,
            "teacher": teacher,
            "storage": storage,
        }
        if index is not None and outlier_values is not None:
            tensors["outlier_index"] = index[i].contiguous()
            tensors["outlier_patch"] = outlier_values[i].contiguous()
            metadata["outlier_tokens"] = str(outlier_tokens)
        blobs.append(st_save(tensors, metadata=metadata))
    return blobs


def read_metadata(blob: Blob, where: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (the header is JSON after an 8-byte length)."""
    header, _ = _header(blob, where)
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


@dataclass
class StoredFeatures:
    """Features of one sample as stored (no float conversion yet): cheap to batch and to ship."""

    key: str
    teacher: str
    storage: StorageDtype
    patch: torch.Tensor  # [h, w, C] in the storage dtype
    scale: torch.Tensor | None  # [C] float32 (int8 only)
    cls: torch.Tensor | None  # [C_cls] float16/bfloat16
    outlier_index: torch.Tensor | None = None  # [K] int64 raster indices (int8 with outlier tokens)
    outlier_patch: torch.Tensor | None = None  # [K, C] float16

    @property
    def outlier_tokens(self) -> int:
        return 0 if self.outlier_index is None else int(self.outlier_index.shape[0])

    def dequantize(self) -> SampleFeatures:
        patch = self.patch.float() if self.scale is None else self.patch.float() * self.scale
        if self.outlier_index is not None and self.outlier_patch is not None:
            patch.view(-1, patch.shape[-1])[self.outlier_index] = self.outlier_patch.float()
        return SampleFeatures(
            self.key, self.teacher, self.storage, patch, None if self.cls is None else self.cls.float()
        )


_ST_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


def _header(blob: Blob, where: str) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors blob and where its data section starts."""
    if len(blob) < 8:
        raise ValueError(f"{where}: {len(blob)} bytes is too short for a safetensors blob")
    (length,) = struct.unpack_from("<Q", blob)
    if length > len(blob) - 8:
        raise ValueError(f"{where}: safetensors header says {length} bytes but the blob has {len(blob) - 8}")
    try:
        header = json.loads(bytes(blob[8 : 8 + length]))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: safetensors header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{where}: safetensors header is not a JSON object")
    return header, 8 + length


def _views(blob: bytearray | memoryview, header: dict[str, Any], start: int) -> dict[str, torch.Tensor]:
    """The blob's tensors as views of its bytes (no copy), after the checks the safetensors library
    makes: known dtypes, sizes that match the shapes, and data ranges that tile the data section
    exactly (in order, no gap, no overlap). Raises ValueError on any mismatch."""
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
            raise ValueError(f"tensor {name!r}: unknown dtype in {info!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
        ):
            raise ValueError(f"tensor {name!r}: bad shape or data_offsets in {info!r}")
        entries.append((offsets[0], offsets[1], name, _ST_DTYPES[info["dtype"]], shape))
    entries.sort(key=lambda e: (e[0], e[1]))
    end = 0
    tensors = {}
    for begin, stop, name, dtype, shape in entries:
        count = math.prod(shape)
        if begin != end or stop - begin != count * dtype.itemsize:
            raise ValueError(
                f"tensor {name!r}: data_offsets [{begin}, {stop}] do not fit its shape {shape} in order"
            )
        end = stop
        flat = (
            torch.frombuffer(blob, dtype=dtype, count=count, offset=start + begin)
            if count
            else torch.empty(0, dtype=dtype)
        )
        if flat.data_ptr() % dtype.itemsize:  # a blob written unaligned: copy rather than misalign
            flat = flat.clone()
        tensors[name] = flat if len(shape) == 1 else flat.view(shape)
    if end != len(blob) - start:
        raise ValueError(f"the tensors cover {end} bytes of a {len(blob) - start}-byte data section")
    return tensors


def parse_sample(blob: Blob, where: str) -> StoredFeatures:
    """Parse and check one blob; ``where`` (shard and key) names the culprit in every error.

    A writable blob (``bytearray`` or a writable ``memoryview``: the training loader's views of
    the mapped shards) is parsed without copying: the tensors are views of its bytes and keep
    them alive. ``bytes`` are read with the safetensors library, which copies them.
    """
    header, start = _header(blob, where)
    raw_metadata = header.get("__metadata__") or {}
    if not isinstance(raw_metadata, dict):
        raise ValueError(
            f"{where}: the safetensors header's __metadata__ is not a table; re-extract this shard"
        )
    metadata = {str(k): str(v) for k, v in raw_metadata.items()}
    if metadata.get("format") != FEATURE_FORMAT:
        raise ValueError(
            f"{where}: not a {FEATURE_FORMAT} blob (metadata {metadata}); re-extract this teacher"
        )
    storage = check_storage(metadata.get("storage", "?"))
    try:
        if isinstance(blob, bytes) or memoryview(blob).readonly:  # views of read-only memory: copy instead
            tensors = st_load(bytes(blob))
        else:
            tensors = _views(blob, header, start)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ValueError(f"{where}: corrupt safetensors blob ({exc}); re-extract this shard") from exc
    if "patch" not in tensors:
        raise ValueError(f"{where}: blob has no 'patch' tensor (has {sorted(tensors)})")
    stored = tensors["patch"]
    if stored.dtype != _TORCH_DTYPES[storage] or stored.ndim != 3:
        raise ValueError(
            f"{where}: patch is {stored.dtype} {tuple(stored.shape)}, expected {storage} [h, w, C]"
        )
    scale = None
    if storage == "int8":
        if "patch_scale" not in tensors:
            raise ValueError(f"{where}: int8 blob without 'patch_scale'")
        scale = tensors["patch_scale"]
        if scale.dtype != torch.float32 or scale.shape != (stored.shape[-1],):
            raise ValueError(
                f"{where}: patch_scale {scale.dtype} {tuple(scale.shape)} does not fit {stored.shape[-1]} channels"
            )
    index = outliers = None
    if "outlier_index" in tensors or "outlier_patch" in tensors:
        index, outliers = tensors.get("outlier_index"), tensors.get("outlier_patch")
        h, w, channels = stored.shape
        if (
            storage != "int8"
            or index is None
            or outliers is None
            or index.dtype != torch.int32
            or index.ndim != 1
            or outliers.dtype != torch.float16
            or tuple(outliers.shape) != (index.shape[0], channels)
            or (index.numel() and not (int(index.min()) >= 0 and int(index.max()) < h * w))
        ):
            raise ValueError(
                f"{where}: outlier tokens do not fit (index {None if index is None else (index.dtype, tuple(index.shape))}, "
                f"values {None if outliers is None else (outliers.dtype, tuple(outliers.shape))}, grid {h}x{w}x{channels}); "
                "re-extract this shard"
            )
        index = index.long()
    return StoredFeatures(
        metadata.get("key", ""),
        metadata.get("teacher", ""),
        storage,
        stored,
        scale,
        tensors.get("cls"),
        index,
        outliers,
    )


def decode_sample(blob: bytes, where: str) -> SampleFeatures:
    """Parse and dequantise one blob to float32."""
    return parse_sample(blob, where).dequantize()
