"""The one canonical view shared by the student and every teacher.

An image is resized (short side) and centre-cropped once to a square of ``size`` pixels.
Every consumer then resamples that same view to its own resolution: no teacher sees a
different crop (Theia fed DINOv2 an 87.5% crop and the others the full frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image


def canonical_view(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` (bicubic, antialiased) and centre-crop to ``size x size``."""
    if image.mode != "RGB":
        raise ValueError(f"canonical_view expects an RGB image, got mode {image.mode!r}; convert it first")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


def check_image_batch(images: torch.Tensor, what: str = "images") -> None:
    """Raise a ValueError naming the problem unless ``images`` is ``[B, 3, H, W]`` uint8 or float."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{what} must have shape [B, 3, H, W] (RGB, channels first), got {tuple(images.shape)}; "
            "for a single image add a batch dimension with images[None]"
        )
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"{what} must be uint8 in [0, 255] or float in [0, 1], got dtype {images.dtype}")


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float32 [0, 1], on the images' own device."""
    check_image_batch(images)
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def resize_and_normalize(
    images: torch.Tensor,
    size: int | tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """Canonical-view batch -> a model's input: resampled to ``size`` and normalised with mean/std."""
    x = to_unit_float(images)
    target = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) != target:
        x = F.interpolate(x, size=target, mode="bicubic", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
