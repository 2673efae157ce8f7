"""Bytes per sample per teacher and storage dtype, fidelity vs fp32, and the real-size extrapolation.

Measured (tiny teachers, synthetic scenes): the exact bytes of the stored feature shards per
sample (safetensors blob + tar member overhead) for fp16, bf16 and int8, and the per-token cosine
of the stored features against the teacher's fp32 output (min, 0.1% quantile and mean over all
tokens). A stress row uses synthetic features with a few outlier channels (like the massive
activations of large ViTs) to show what per-channel int8 scales buy over one scale per sample;
another plants high-norm artifact tokens (CLIP-L, DINOv2 without registers) to show what plain
int8 loses and what keeping those tokens in float16 (``--outlier-tokens``) costs in bytes.
SAM's optional area-downsampled grid is measured against the full grid (upsampled back, nearest).

Extrapolated: bytes per image for each teacher set (the five defaults, ``worldmodel``: dinov2 + dinov3 +
vjepa2, ``modern``: siglip2 + dinov3 + sam2) at the teachers' real output sizes (encoding zero tensors
of those shapes through the same code), against Theia's ~4.2 MB per image.

    python benchmarks/storage.py --output benchmarks/results/storage.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common import FIVE, base_parser, device_of, machine, write_result
from distill.data.codec import area_downsample, decode_sample, encode_batch
from distill.data.shards import write_shard
from distill.features import TeacherOutput
from distill.synthetic import render_scene
from distill.teachers import load_teacher

THEIA_BYTES_PER_IMAGE = 4.2e6
NEW = ("dinov3", "siglip2", "sam2", "vjepa2")
WORLDMODEL = ("dinov2", "dinov3", "vjepa2")
MODERN = ("siglip2", "dinov3", "sam2")
# Real output sizes of the default weights: (grid, channels, cls channels). CLIP ViT-L-14 tokens are
# 1024 wide with a 768 projected CLS; Depth-Anything-V2-Small's four 384-wide maps give 1536 channels;
# DINOv3 ViT-L/16 at 224 px is 14x14; SigLIP 2 so400m/16 runs at its own 384 px (24x24, pooled 1152);
# SAM 2.1 Hiera-L's decoder embedding is SAM's size; V-JEPA 2 ViT-L at 256 px stores one tubelet's
# 16x16 tokens per frame.
REAL_SIZES: dict[str, tuple[tuple[int, int], int, int | None]] = {
    "clip": ((16, 16), 1024, 768),
    "dinov2": ((16, 16), 1024, 1024),
    "mae": ((14, 14), 1024, 1024),
    "sam": ((64, 64), 256, None),
    "depth_anything": ((16, 16), 1536, None),
    "dinov3": ((14, 14), 1024, 1024),
    "siglip2": ((24, 24), 1152, 1152),
    "sam2": ((64, 64), 256, None),
    "vjepa2": ((16, 16), 1024, None),
}
CONFIGS: dict[str, dict[str, Any]] = {
    "all bf16 (Theia-like)": {"storage": "bf16"},
    "all fp16": {"storage": "fp16"},
    "all int8": {"storage": "int8"},
    "all int8, sam 32x32": {"storage": "int8", "grids": {"sam": (32, 32)}},
    "all int8, sam 16x16": {"storage": "int8", "grids": {"sam": (16, 16)}},
    "all int8, 4 outlier tokens in clip/dinov2/mae": {
        "storage": "int8",
        "outliers": {"clip": 4, "dinov2": 4, "mae": 4},
    },
    "worldmodel bf16": {"teachers": WORLDMODEL, "storage": "bf16"},
    "worldmodel int8": {"teachers": WORLDMODEL, "storage": "int8"},
    "modern bf16": {"teachers": MODERN, "storage": "bf16"},
    "modern int8": {"teachers": MODERN, "storage": "int8"},
    "modern int8, sam2 32x32": {"teachers": MODERN, "storage": "int8", "grids": {"sam2": (32, 32)}},
}


def stored_bytes(
    name: str, keys: list[str], out: TeacherOutput, storage: str, outlier_tokens: int = 0
) -> tuple[float, list[bytes]]:
    """Bytes per sample of a real feature shard holding these samples, and the blobs."""
    blobs = encode_batch(keys, name, out.patch, out.cls, storage, outlier_tokens)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "shard.tar"
        with write_shard(path) as sink:
            for key, blob in zip(keys, blobs, strict=True):
                sink.write(key, {f"{name}.safetensors": blob})
        return path.stat().st_size / len(keys), blobs


def cosine_summary(stored: torch.Tensor, original: torch.Tensor) -> dict[str, float]:
    cos = F.cosine_similarity(
        stored.reshape(-1, stored.shape[-1]).double(),
        original.reshape(-1, original.shape[-1]).double(),
        dim=-1,
    )
    return {
        "min": round(float(cos.min()), 6),
        "q001": round(float(torch.quantile(cos, 0.001)), 6),
        "mean": round(float(cos.mean()), 6),
    }


def measure_teacher(name: str, keys: list[str], out: TeacherOutput) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for storage in ("fp16", "bf16", "int8"):
        per_sample, blobs = stored_bytes(name, keys, out, storage)
        patch = torch.stack([decode_sample(b, name).patch for b in blobs])
        rows[storage] = {
            "bytes_per_sample": round(per_sample, 1),
            "patch_cosine": cosine_summary(patch, out.patch),
        }
    return rows


def outlier_stress(samples: int = 16) -> dict[str, Any]:
    """Features with 4 outlier channels 100x larger in some tokens: per-channel vs per-sample int8 scales."""
    gen = torch.Generator().manual_seed(0)
    patch = torch.randn(samples, 16, 16, 256, generator=gen)
    patch[:, :, :, :4] *= 100.0 * (torch.rand(samples, 16, 16, 1, generator=gen) > 0.9)
    patch[:, :, :, :4] += torch.randn(samples, 16, 16, 4, generator=gen)
    keys = [f"s{i}" for i in range(samples)]
    blobs = encode_batch(keys, "stress", patch, None, "int8")
    per_channel = torch.stack([decode_sample(b, "stress").patch for b in blobs])
    scale = patch.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    per_sample = torch.round(patch / scale) * scale
    return {
        "int8_per_sample_per_channel_scales": cosine_summary(per_channel, patch),
        "int8_one_scale_per_sample": cosine_summary(per_sample, patch),
    }


def planted_artifact_tokens(samples: int = 8, tokens: int = 4) -> dict[str, Any]:
    """16x16x1024 Gaussian features with ``tokens`` high-norm artifact tokens per sample (norm ratio R to
    the typical token, over all channels or concentrated in 16): per-token cosine and bytes of plain int8
    vs int8 keeping the ``tokens`` highest-norm tokens in float16 (``--outlier-tokens``)."""
    rows: dict[str, Any] = {}
    keys = [f"s{i}" for i in range(samples)]
    for label, ratio, concentrated in [
        ("R10", 10.0, None),
        ("R30", 30.0, None),
        ("R100", 100.0, None),
        ("R30_16_channels", 30.0, 16),
        ("R100_16_channels", 100.0, 16),
    ]:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(samples, 16, 16, 1024, generator=gen)
        flat = x.view(samples, 256, 1024)
        for b in range(samples):
            for i in torch.randperm(256, generator=gen)[:tokens].tolist():
                if concentrated is None:
                    flat[b, i] *= ratio
                else:
                    channels = torch.randperm(1024, generator=gen)[:concentrated]
                    signs = torch.randn(concentrated, generator=gen).sign()
                    flat[b, i, channels] += signs * ratio * (1024 / concentrated) ** 0.5
        row = {}
        for mode, k in (("int8", 0), (f"int8_{tokens}_outlier_tokens", tokens)):
            per_sample, blobs = stored_bytes("planted", keys, TeacherOutput(x, None), "int8", k)
            patch = torch.stack([decode_sample(b, "planted").patch for b in blobs])
            row[mode] = {"bytes_per_sample": round(per_sample, 1), "patch_cosine": cosine_summary(patch, x)}
        rows[label] = row
    return rows


def sam_grid_fidelity(out: TeacherOutput, grid: tuple[int, int]) -> dict[str, float]:
    small = area_downsample(out.patch, grid)
    back = F.interpolate(small.permute(0, 3, 1, 2), size=out.patch.shape[1:3], mode="nearest").permute(
        0, 2, 3, 1
    )
    return cosine_summary(back, out.patch)


def real_size_bytes() -> dict[str, Any]:
    """Bytes per image for each configuration's teachers (default: the five) at real sizes."""
    result: dict[str, Any] = {}
    for label, config in CONFIGS.items():
        per_teacher = {}
        for name in config.get("teachers", FIVE):
            grid, channels, cls_channels = REAL_SIZES[name]
            grid = config.get("grids", {}).get(name, grid)
            out = TeacherOutput(
                torch.zeros(1, *grid, channels),
                None if cls_channels is None else torch.zeros(1, cls_channels),
            )
            outliers = config.get("outliers", {}).get(name, 0)
            per_teacher[name], _ = stored_bytes(name, ["k"], out, config["storage"], outliers)
        total = sum(per_teacher.values())
        result[label] = {
            "bytes_per_teacher": {k: int(v) for k, v in per_teacher.items()},
            "bytes_per_image": int(total),
            "megabytes_per_image": round(total / 1e6, 3),
            "fraction_of_theia": round(total / THEIA_BYTES_PER_IMAGE, 3),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("storage", __doc__)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args(argv)
    device = device_of(args.device)
    images = torch.from_numpy(np.stack([np.asarray(render_scene(i, (64, 64))) for i in range(args.samples)]))
    images = images.permute(0, 3, 1, 2).contiguous().to(device)
    keys = [f"s{i:04d}" for i in range(args.samples)]
    measured, sam_rows = {}, {}
    for name in (*FIVE, *NEW):
        teacher = load_teacher(name, "tiny", device=device)
        out = teacher(images).to("cpu")
        measured[name] = {
            "grid": list(teacher.spec.grid),
            "channels": teacher.spec.channels,
            **measure_teacher(name, keys, out),
        }
        if name == "sam":
            h, w = teacher.spec.grid
            sam_rows = {f"{h // 2}x{w // 2}": sam_grid_fidelity(out, (h // 2, w // 2))}
    result = {
        "benchmark": "storage",
        "machine": machine(device),
        "samples": args.samples,
        "measured_tiny_teachers": measured,
        "int8_outlier_stress": outlier_stress(),
        "int8_planted_artifact_tokens": planted_artifact_tokens(),
        "sam_area_downsampled_grid_cosine_vs_full_grid": sam_rows,
        "real_size_extrapolation": real_size_bytes(),
        "theia_bytes_per_image": THEIA_BYTES_PER_IMAGE,
        "real_sizes": {
            k: {"grid": list(g), "channels": c, "cls_channels": cc} for k, (g, c, cc) in REAL_SIZES.items()
        },
        "note": "bytes include the safetensors header and the tar member header and padding; the image JPEG is not counted",
    }
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
