"""Deterministic procedural images and videos: the offline stand-in for a real dataset.

Each image is a smooth colour gradient with a few filled shapes (discs, boxes, rings), so
teachers and the student see structure (edges, regions, depth-like layering) rather than noise.
The same seed always gives the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "box", "ring")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
    return r, g, b


def render_scene(
    seed: int,
    size: tuple[int, int] = (96, 96),
    shapes: int = 4,
    shift: tuple[float, float] = (0.0, 0.0),
) -> Image.Image:
    """One RGB image (width, height = ``size``). ``shift`` moves every shape, in pixels, for videos."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    start, end = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xs / width + np.sin(angle) * ys / height + 1.0) / 2.0
    background = start * (1 - t[..., None]) + end * t[..., None]
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(shapes):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        cx = rng.uniform(0.15, 0.85) * width + shift[0]
        cy = rng.uniform(0.15, 0.85) * height + shift[1]
        radius = rng.uniform(0.08, 0.25) * min(width, height)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        colour = _colour(rng)
        if kind == "disc":
            draw.ellipse(box, fill=colour)
        elif kind == "box":
            draw.rectangle(box, fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=max(2, int(radius / 3)))
    return image


def write_image_folder(
    root: str | Path,
    classes: int = 2,
    per_class: int = 8,
    size: tuple[int, int] = (96, 80),
    seed: int = 0,
) -> list[Path]:
    """An ImageNet-style folder ``root/class_k/img_j.jpg`` (non-square, so cropping is exercised)."""
    root = Path(root)
    paths: list[Path] = []
    for k in range(classes):
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            path = folder / f"img_{j:04d}.jpg"
            render_scene(seed * 100_003 + k * 1_009 + j, size).save(path, quality=95)
            paths.append(path)
    return paths


def video_frames(
    frames: int = 16, size: tuple[int, int] = (96, 96), seed: int = 0, speed: float = 2.0
) -> list[Image.Image]:
    """A short clip: one scene whose shapes drift by ``speed`` pixels per frame."""
    return [render_scene(seed, size, shift=(speed * i, 0.5 * speed * i)) for i in range(frames)]


def write_video(
    path: str | Path, frames: int = 16, size: tuple[int, int] = (96, 96), fps: int = 8, seed: int = 0
) -> Path:
    """Encode :func:`video_frames` as an H.264 MP4 with PyAV (yuv420p, so sizes must be even)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for image in video_frames(frames, size, seed):
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


SHIFTS = ("invert", "overlay")


def shifted(image: Image.Image, shift: str) -> Image.Image:
    """``image`` under a planted domain shift: its colours inverted, or a semi-transparent overlay.

    The overlay blends half of a fixed pattern of coloured bands (a segmentation overlay's look)
    over the image, the same pattern on every image, as a fixed camera-side artefact would be.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if shift == "invert":
        return Image.fromarray((255 - rgb).astype(np.uint8))
    if shift != "overlay":
        raise ValueError(f"unknown shift {shift!r}; choose from {', '.join(SHIFTS)}")
    height, width = rgb.shape[:2]
    bands = np.array([(230, 40, 40), (40, 200, 60), (50, 80, 230)], dtype=np.float32)
    rows = (np.arange(height) * 6 // max(height, 1)) % len(bands)
    columns = (np.arange(width) * 4 // max(width, 1)) % 2
    pattern = bands[(rows[:, None] + columns[None, :]) % len(bands)]
    return Image.fromarray((0.5 * rgb + 0.5 * pattern).round().astype(np.uint8))


def write_paired_folders(
    source: str | Path,
    target: str | Path,
    shift: str,
    classes: int = 2,
    per_class: int = 8,
    size: tuple[int, int] = (96, 80),
    seed: int = 0,
) -> list[Path]:
    """A clean folder at ``target`` (:func:`write_image_folder`) and its ``shift``-ed copy at ``source``.

    The copies are PNG files under the same relative paths (``class_0/img_0000.png`` pairs
    ``class_0/img_0000.jpg``), as overlays saved beside JPEG originals are. Returns the source files.
    """
    written = []
    for path in write_image_folder(target, classes, per_class, size, seed):
        relative = path.relative_to(target).with_suffix(".png")
        out = Path(source) / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as clean:
            shifted(clean, shift).save(out)
        written.append(out)
    return written
