"""Writers for each kind of bad input the data pipeline must handle (shared by the tests)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from distill.synthetic import render_scene


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_png_bomb(path: Path, side: int = 100_000) -> None:
    """A valid PNG header claiming ``side x side`` pixels (Pillow refuses it at open)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * (side + 1))  # one row; never decoded
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Write one file of every bad kind under ``folder``; returns relpath -> expected reason word.

    Accepted-with-conversion kinds (grayscale, CMYK, RGBA, 16-bit) map to "" (no rejection).
    """
    folder.mkdir(parents=True, exist_ok=True)
    scene = render_scene(7, (80, 72))
    full = folder / "truncated_full.jpg"
    scene.save(full, quality=95)
    data = full.read_bytes()
    full.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not an image\n")
    scene.convert("L").save(folder / "gray.png")
    scene.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    rgba = scene.convert("RGBA")
    rgba.putalpha(Image.new("L", scene.size, 0))  # fully transparent: must come out white
    rgba.save(folder / "rgba.png")
    sixteen = (np.asarray(scene.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "gray16.png")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "tiny.png")
    write_png_bomb(folder / "bomb.png")
    (folder / "notes.txt").write_text("not an image extension\n")
    return {
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "gray.png": "",
        "cmyk.jpg": "",
        "rgba.png": "",
        "gray16.png": "",
        "tiny.png": "minimum short side",
        "bomb.png": "decompression bomb",
        "notes.txt": "not an image extension",
    }
