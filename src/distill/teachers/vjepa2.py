"""Teacher family ``vjepa2`` (transformers ``VJEPA2Model``): a video teacher, targets per frame from clips.

V-JEPA 2 consumes clips: a 3D patch embedding turns each tubelet of 2 consecutive frames and 16x16
pixels into one token, and attention runs over the whole clip. Targets are the encoder's final-layernorm
tokens (the predictor is not run); V-JEPA 2 has no summary token, so ``cls`` is None.

Which tokens a frame gets (``video_features``): the video's frames, in order, are cut into consecutive
clips of ``clip_frames`` frames (the checkpoint's ``frames_per_clip``); when the last clip would run past
the end, it is the video's last ``clip_frames`` frames instead, overlapping the one before, so every
clip has the context the model was trained with. Each frame takes the tokens of the tubelet holding it
in the first clip that contains it: exactly one ``[h, w, C]`` target per frame, shared by the two frames
of a tubelet. A video shorter than a clip is one shorter clip; an odd frame count is completed by
repeating the last frame (whose extra tokens are dropped), so a one-frame video is the frame repeated
over a tubelet, which is how V-JEPA 2 encodes an image.

``forward(images)`` (the ``Teacher`` contract, used online and by every image-level check) encodes each
image that way, as a still. Extraction over a frames dataset uses ``video_features`` per video instead
(distill.preprocess.video_targets), so stored targets carry motion context; an online vjepa2 sees only
the loader's shuffled frames and gets the still-image targets (its stats are estimated on those).

Geometry: input size = ``config.crop_size`` (RoPE positions are laid out for that grid), mean/std from
``preprocessor_config.json``, else ImageNet's. ``weights``: a hub id (default
``facebook/vjepa2-vitl-fpc64-256``: 16x16 x 1024 at 256 px, 64-frame clips) or a local directory.
Tiny: width 32, 2 layers, patch 8 at 48 px (a 6x6 x 32 grid), 4-frame clips.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import VJEPA2Config, VJEPA2Model
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from distill.features import TeacherOutput, TeacherSpec
from distill.geometry import check_image_batch
from distill.teachers._hf import load_pretrained, normalization, read_preprocessor, seeded, square_size
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher

NAME = "vjepa2"
DEFAULT_WEIGHTS = "facebook/vjepa2-vitl-fpc64-256"


def tiny_config() -> VJEPA2Config:
    """The tiny teacher's config (a fresh object each call: models keep a reference to theirs)."""
    return VJEPA2Config(
        patch_size=8,
        crop_size=48,
        frames_per_clip=4,
        tubelet_size=2,
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        mlp_ratio=2.0,
        pred_hidden_size=16,
        pred_num_attention_heads=2,
        pred_num_hidden_layers=1,
    )


def vjepa2_spec(config: Any, preprocessor: dict[str, Any]) -> TeacherSpec:
    """Input size = crop size, grid = crop / patch, channels = hidden size, no CLS."""
    size = square_size(config.crop_size, "vjepa2 crop_size")
    patch = square_size(config.patch_size, "vjepa2 patch_size")
    if size % patch:
        raise ValueError(f"teacher {NAME!r}: crop size {size} is not a multiple of the patch size {patch}")
    mean, std = normalization(preprocessor, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    side = size // patch
    return TeacherSpec(NAME, size, mean, std, (side, side), int(config.hidden_size), None)


def clip_windows(num_frames: int, clip_frames: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each clip over a video of ``num_frames`` frames (see the module docstring)."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_frames <= clip_frames:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - clip_frames + 1, clip_frames))
    if starts[-1] + clip_frames < num_frames:
        starts.append(num_frames - clip_frames)
    return [(start, start + clip_frames) for start in starts]


class VJepa2Teacher(Teacher):
    """V-JEPA 2 encoder: per-frame tubelet tokens, from clips (``video_features``) or stills (``forward``)."""

    def __init__(self, model: VJEPA2Model, spec: TeacherSpec) -> None:
        super().__init__(spec)
        self.model = model
        self.tubelet = int(model.config.tubelet_size)
        self.clip_frames = int(model.config.frames_per_clip)
        if self.clip_frames % self.tubelet:
            raise ValueError(
                f"teacher {NAME!r}: frames_per_clip {self.clip_frames} is not a multiple of the tubelet size {self.tubelet}"
            )

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        """Each image a one-frame clip (the model repeats it over a tubelet)."""
        return self._encode_clips(pixel_values[:, None])

    def _encode_clips(self, videos: torch.Tensor) -> TeacherOutput:
        """Normalised clips [N, T, 3, S, S] -> per-frame tokens [N * T, h, w, C] (frame-major within a clip)."""
        clips, frames = videos.shape[:2]
        padded = -frames % self.tubelet if frames > 1 else 0  # one frame: the model repeats it itself
        if padded:
            videos = torch.cat([videos, videos[:, -1:].expand(-1, padded, -1, -1, -1)], dim=1)
        tokens = self.model(pixel_values_videos=videos, skip_predictor=True).last_hidden_state
        height, width = self.spec.grid
        tubelets = tokens.reshape(clips, -1, height, width, tokens.shape[-1])
        per_frame = tubelets.repeat_interleave(self.tubelet, dim=1)[:, :frames]
        return TeacherOutput(patch=per_frame.flatten(0, 1), cls=None)

    @torch.inference_mode()
    def clip_features(self, clips: torch.Tensor) -> TeacherOutput:
        """Canonical-view clips ``[N, T, 3, H, W]`` (frames in order) -> patch ``[N * T, h, w, C]``."""
        if clips.ndim != 5:
            raise ValueError(f"clips for teacher {NAME!r} must be [N, T, 3, H, W], got {tuple(clips.shape)}")
        frames = clips.flatten(0, 1)
        check_image_batch(frames, f"clip frames for teacher {NAME!r}")
        pixels = self.preprocess(frames).unflatten(0, clips.shape[:2])
        return self._encode_clips(pixels)

    @torch.inference_mode()
    def video_features(self, frames: torch.Tensor, clips_per_batch: int = 1) -> TeacherOutput:
        """One video's frames ``[T, 3, H, W]`` in order -> one target per frame, patch ``[T, h, w, C]``."""
        windows = clip_windows(int(frames.shape[0]), self.clip_frames)
        height, width = self.spec.grid
        patch = torch.empty(frames.shape[0], height, width, self.spec.channels, device=self.device)
        done = 0
        for first in range(0, len(windows), clips_per_batch):
            group = windows[first : first + clips_per_batch]
            length = group[0][1] - group[0][0]  # one short window only when the video is shorter than a clip
            out = self.clip_features(torch.stack([frames[a:b] for a, b in group])).patch
            for i, (start, stop) in enumerate(group):
                fresh = slice(max(start, done), stop)
                patch[fresh] = out[i * length + fresh.start - start : i * length + stop - start]
                done = stop
        return TeacherOutput(patch=patch, cls=None)


def build_tiny() -> VJepa2Teacher:
    """Seeded random-init VJEPA2Model miniature (same class as the real teacher)."""
    with seeded(0):
        model = VJEPA2Model(tiny_config()).eval()
    return VJepa2Teacher(model, vjepa2_spec(model.config, {}))


def load_weights(weights: str) -> VJepa2Teacher:
    """A hub id or local directory holding a ``vjepa2`` checkpoint."""
    model = load_pretrained(NAME, weights, {"vjepa2": VJEPA2Model})
    return VJepa2Teacher(model, vjepa2_spec(model.config, read_preprocessor(weights)))


register_teacher(TeacherEntry(NAME, DEFAULT_WEIGHTS, build_tiny, load_weights, decoder=None))
