"""Media in and out: an image, a folder of images or a video -> canonical-view clips; grids -> PNG / MP4.

Every frame goes through :func:`distill.geometry.canonical_view` at the checkpoint's image size,
the same view the student and the teachers were trained on. Bad input raises :class:`MediaError`
naming the file and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from distill.geometry import canonical_view
from distill.images import IMAGE_EXTENSIONS, ImageLimits, RejectedInput, load_rgb
from distill.io import atomic_path

IMAGE_SUFFIXES = IMAGE_EXTENSIONS  # the same set dataset organisation accepts
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


class MediaError(ValueError):
    """An input file that cannot be decoded; the message names the file and the fix."""


@dataclass
class Clip:
    """Frames decoded together (one PCA basis, one depth range): a whole video, or one image."""

    source: Path  # the file the frames came from
    name: str  # output stem, unique within one run (relative path for folder members)
    frames: torch.Tensor  # uint8 [T, 3, S, S] canonical views
    fps: Fraction | None  # None for still images


def read_image(path: Path) -> Image.Image:
    """Open an image as RGB exactly as dataset organisation does (:func:`distill.images.load_rgb`).

    Grey, palette, CMYK, alpha (composited on white) and 16-bit images are converted; float images,
    unreadable files and decompression bombs are refused. Any size is accepted: decoding a small
    image is the user's choice, so the dataset's minimum size does not apply.
    """
    try:
        image, _ = load_rgb(path, ImageLimits(min_size=1))
    except RejectedInput as error:
        raise MediaError(f"{path}: {error.reason}") from error
    return image


def _as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _video_rate(stream: object, path: Path) -> Fraction:
    rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)
    if rate is None or rate <= 0:
        raise MediaError(f"{path}: the video stream declares no frame rate; remux it with a fixed frame rate")
    return Fraction(rate)


def read_video(path: Path, size: int) -> Clip:
    """Decode every frame of the first video stream with PyAV, as canonical views, with its fps."""
    import av

    frames: list[torch.Tensor] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: the file has no video stream; pass a video or an image")
            stream = container.streams.video[0]
            fps = _video_rate(stream, path)
            for frame in container.decode(stream):
                frames.append(_as_tensor(canonical_view(frame.to_image().convert("RGB"), size)))
    except av.FFmpegError as error:
        raise MediaError(
            f"{path}: unreadable video ({error}); check the file is complete and a supported codec"
        ) from error
    if not frames:
        raise MediaError(f"{path}: the video has zero frames; pass a video with at least one frame")
    return Clip(source=path, name=path.stem, frames=torch.stack(frames), fps=fps)


def _image_clip(path: Path, name: str, size: int) -> Clip:
    return Clip(
        source=path, name=name, frames=_as_tensor(canonical_view(read_image(path), size))[None], fps=None
    )


def folder_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursive), in sorted path order."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise MediaError(
            f"{folder}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass a folder of images"
        )
    return found


def output_names(folder: Path, members: list[Path]) -> list[str]:
    """One distinct output stem per image: its relative path with ``/`` as ``__``, without the suffix
    unless two images differ only by suffix (``x.png`` and ``x.jpg`` -> ``x_png``, ``x_jpg``)."""
    stems = [m.relative_to(folder).with_suffix("").as_posix().replace("/", "__") for m in members]
    repeated = {stem for stem in stems if stems.count(stem) > 1}
    names = [
        f"{stem}_{m.suffix[1:]}" if stem in repeated else stem for stem, m in zip(stems, members, strict=True)
    ]
    if len(set(names)) != len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise MediaError(f"{folder}: images map to the same output names {clash}; rename them")
    return names


MediaKind = Literal["image", "folder", "video"]


def media_kind(path: str | Path) -> MediaKind:
    """What ``path`` is, or the error for a missing or unsupported path (checked before any model loads)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; pass an existing image, folder or video")
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise MediaError(
        f"{path}: unsupported file type {suffix or '(none)'!r}; pass an image "
        f"({', '.join(sorted(IMAGE_SUFFIXES))}), a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a folder"
    )


def paired_clips(
    path: str | Path, partner: str | Path | None, size: int
) -> Iterator[tuple[Clip, Clip | None]]:
    """Each clip of ``path`` with its partner in ``partner`` (the same kind of media), or None.

    Folders pair by relative path without the suffix (``a/x.png`` with ``a/x.jpg``, as a paired
    dataset does); a lone image or video pairs the lone file given. Frames of a pair must agree in number.
    """
    if partner is None:
        yield from ((clip, None) for clip in iter_clips(path, size))
        return
    kinds = media_kind(path), media_kind(partner)
    if kinds[0] != kinds[1]:
        raise MediaError(f"{partner} is a {kinds[1]} but {path} a {kinds[0]}; pair media of one kind")
    if kinds[0] == "folder":
        names = [output_names(Path(p), folder_images(Path(p))) for p in (path, partner)]
        if names[0] != names[1]:
            unpaired = sorted(set(names[0]) ^ set(names[1]))
            raise MediaError(
                f"{path} and {partner} do not hold the same images (by relative path, suffix aside): "
                f"{len(unpaired)} without a partner, e.g. {unpaired[:3]}; pair the folders file for file"
            )
    for clip, other in zip(iter_clips(path, size), iter_clips(partner, size), strict=True):
        if clip.frames.shape != other.frames.shape:
            raise MediaError(
                f"{other.source} has {other.frames.shape[0]} frames, {clip.source} {clip.frames.shape[0]}; "
                "paired videos need the same frames"
            )
        yield clip, other


def iter_clips(path: str | Path, size: int) -> Iterator[Clip]:
    """Yield the clips of ``path``: one per image (a folder's in sorted order), or one whole video."""
    path = Path(path)
    kind = media_kind(path)
    if kind == "folder":
        members = folder_images(path)
        for member, name in zip(members, output_names(path, members), strict=True):
            yield _image_clip(member, name, size)
    elif kind == "video":
        yield read_video(path, size)
    else:
        yield _image_clip(path, path.stem, size)


def write_png(image: Image.Image, path: str | Path) -> Path:
    """Save a PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def write_mp4(frames: Sequence[Image.Image], path: str | Path, fps: Fraction) -> Path:
    """Encode frames as H.264 MP4 at ``fps``, one output frame per input frame, atomically.

    yuv420p needs even sizes, so odd widths/heights are padded by one white pixel.
    """
    import av

    if not frames:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    width, height = frames[0].size
    even_w, even_h = width + width % 2, height + height % 2
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        for index, image in enumerate(frames):
            if image.size != (width, height):
                raise ValueError(f"{path}: frame {index} is {image.size}, frame 0 is {(width, height)}")
            if (even_w, even_h) != (width, height):
                padded = Image.new("RGB", (even_w, even_h), (255, 255, 255))
                padded.paste(image, (0, 0))
                image = padded
            frame = av.VideoFrame.from_image(image)
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
