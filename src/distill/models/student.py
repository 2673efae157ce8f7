"""The student: a ViT whose whole image representation can pass through one vector z."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill.features import TeacherOutput
from distill.geometry import check_image_batch, to_unit_float
from distill.models.backbone import build_backbone
from distill.models.checkpoint import (
    WEIGHTS_NAME,
    check_stats,
    load_state_strict,
    read_config,
    read_stats,
    write_checkpoint,
)
from distill.models.config import StudentConfig
from distill.models.decoder import TokenDecoder, ZProjection
from distill.models.heads import TeacherHead
from distill.models.keypoints import KeypointSprites, SpriteSearch, points_from_z
from distill.models.pixel_head import PixelHead
from distill.models.quantize import Quantized, Quantizer, build_quantizer
from distill.stats import FeatureStats


@dataclass
class StudentOutput:
    """What the student predicts for a batch.

    ``features`` are in the stats-normalised space the losses use (or the teacher's raw space
    after ``predict(..., denormalize=True)``); ``pixels`` is [B, 3, H, W] in [0, 1] image space,
    unclamped, or None without a pixel head. With a quantiser, ``z`` is the quantised z, ``codes`` its
    integer codes and ``commit`` the VQ commitment loss (None otherwise).
    """

    z: torch.Tensor
    features: dict[str, TeacherOutput]
    pixels: torch.Tensor | None
    codes: torch.Tensor | None = None
    commit: torch.Tensor | None = None
    sprite_search: SpriteSearch | None = None


class Student(nn.Module):
    """ViT backbone -> z -> token grid -> per-teacher heads and pixel head.

    With ``bottleneck="cls"`` every output is computed from z alone (the token decoder never sees
    the backbone's patch tokens); with ``bottleneck="none"`` the heads read the patch tokens.
    ``stats`` (set by :meth:`from_pretrained` or :meth:`set_stats`) map features back to each
    teacher's raw space.
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, config: StudentConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config, load_pretrained=load_pretrained)
        width = config.backbone.width
        self.register_buffer("pixel_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self.to_z = ZProjection(width, config.d_z, config.z_norm, config.z_keypoints)
        self.quantizer: Quantizer | None = build_quantizer(config)
        self.decoder: TokenDecoder | None = None
        grid_dim = width
        if config.bottleneck == "cls":
            grid_dim = config.decoder_dim_resolved
            self.decoder = TokenDecoder(
                config.d_z,
                grid_dim,
                config.decoder_depth,
                config.decoder_heads_resolved,
                config.grid,
                keypoints=config.z_keypoints,
            )
        self.heads = nn.ModuleDict(
            {
                name: TeacherHead(spec, grid_dim, config.d_z, config.head, config.head_hidden_dim)
                for name, spec in config.teachers.items()
            }
        )
        self.pixel_head = (
            PixelHead(grid_dim, config.patch_size, config.image_size) if config.pixel_head else None
        )
        self.sprites = KeypointSprites(config.z_keypoints) if config.keypoint_sprites else None
        self.stats: dict[str, FeatureStats] | None = None

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> the backbone's normalised input, on the model's device."""
        check_image_batch(images, "student images")
        p = self.config.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(
                f"student images are {tuple(images.shape[-2:])}, not a multiple of the patch size {p}; "
                f"resize them (e.g. to the canonical {self.config.image_size}x{self.config.image_size} view)"
            )
        x = to_unit_float(images.to(self.device, non_blocking=True))
        return (x - self.pixel_mean) / self.pixel_std

    def backbone_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone last hidden state [B, 1 + h*w, width] (CLS first) at the images' resolution."""
        return self.backbone(
            pixel_values=self.normalize(images), interpolate_pos_encoding=True
        ).last_hidden_state

    def encode(self, images: torch.Tensor, codes: bool = False) -> torch.Tensor:
        """Images [B, 3, H, W] -> z [B, d_z], the compact representation (no decoder or heads run).

        With a quantiser z is the quantised z, and ``codes=True`` gives its integer codes [B, codes] instead
        (the summary's codes, then one per keypoint coordinate: ``quantizer.layout`` says each one's vocabulary).
        """
        z, quantized = self._project(self.backbone_tokens(images), self.grid_of(images))
        if not codes:
            return z
        if quantized is None:
            raise ValueError("this student has no quantiser (model.quantizer=none): it has no codes")
        return quantized.codes

    def grid_of(self, images: torch.Tensor) -> tuple[int, int]:
        """The patch grid (rows, columns) of a batch of images."""
        return images.shape[-2] // self.config.patch_size, images.shape[-1] // self.config.patch_size

    def _project(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, Quantized | None]:
        """Backbone tokens -> (z, its quantisation or None); z is the quantised z when there is one."""
        return self._quantize(self.to_z(tokens, grid))

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, Quantized | None]:
        if self.quantizer is None:
            return z, None
        quantized = self.quantizer(z)
        return quantized.z, quantized

    def codes_to_z(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes [B, codes] -> the quantised z [B, d_z] they stand for (exactly what ``encode`` gives);
        a code outside its own vocabulary is refused."""
        if self.quantizer is None:
            raise ValueError("this student has no quantiser (model.quantizer=none): codes mean nothing to it")
        return self.quantizer.decode(codes.to(self.device))

    @torch.no_grad()
    def recalibrate_z(self, batches: Iterable[torch.Tensor]) -> int:
        """Set z batch norm's running statistics to the exact ones of the current weights over ``batches``.

        Call it before evaluating or saving a student trained with ``z_norm="batch"`` (the trainer does,
        for every checkpoint); under torch.distributed every rank must call it with its own batches.
        Returns the number of images seen on this rank (0 when the student has no z batch norm).
        """
        norm = self.to_z.z_norm
        if norm is None:
            return 0
        was_training = self.training
        seen = 0
        self.train()
        try:
            with norm.recalibrating():
                for images in batches:  # z before the quantiser: no codebook update
                    self.to_z(self.backbone_tokens(images), self.grid_of(images))
                    seen += images.shape[0]
        finally:
            self.train(was_training)
        return seen

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Frames [T, 3, H, W] -> [T, d_z] (or [B, T, 3, H, W] -> [B, T, d_z]), ``batch_size`` frames at a time.

        Frames may stay on the CPU while the model is on a GPU: chunks move over one at a time and
        the result comes back on the frames' device. ``no_grad`` rather than ``inference_mode``: the
        z's are inputs to the user's own training (a world model) and to ``predict``, which autograd
        refuses for inference tensors.
        """
        if frames.ndim == 5:
            return self.encode_video(frames.flatten(0, 1), batch_size).unflatten(0, frames.shape[:2])
        if frames.ndim != 4:
            raise ValueError(f"frames must be [T, 3, H, W] or [B, T, 3, H, W], got {tuple(frames.shape)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        chunks = [
            self.encode(frames[i : i + batch_size]).to(frames.device)
            for i in range(0, frames.shape[0], batch_size)
        ]
        if not chunks:
            return torch.empty(0, self.config.d_z, device=frames.device)
        return torch.cat(chunks)

    def forward(self, images: torch.Tensor) -> StudentOutput:
        """Images [B, 3, H, W] (uint8 or float [0, 1], H and W multiples of the patch size) -> all predictions."""
        tokens = self.backbone_tokens(images)
        grid = self.grid_of(images)
        z, candidates = self.to_z.project(tokens, grid)
        z, quantized = self._quantize(z)
        if self.decoder is not None:
            out, undrawn = self._heads(z, self.decoder(z, grid))
        else:
            out, undrawn = self._heads(z, tokens[:, 1:].reshape(tokens.shape[0], *grid, -1))
        if quantized is not None:
            out.codes, out.commit = quantized.codes, quantized.commit
        if self.training and self.sprites is not None and undrawn is not None and candidates is not None:
            target = to_unit_float(images.to(undrawn.device))
            out.sprite_search = self.sprites.search(undrawn.detach(), target, *candidates)
        return out

    def predict(
        self, z: torch.Tensor, image_size: tuple[int, int] | int | None = None, denormalize: bool = False
    ) -> StudentOutput:
        """z [B, d_z] (or, with a quantiser, integer codes [B, codes]) -> every teacher's features and
        the pixels, from z alone.

        ``image_size`` sets the rebuilt grid (and pixel resolution; default: the training size).
        ``denormalize=True`` maps features into each teacher's raw space with the saved stats, as
        the teachers' own decoders expect.
        """
        if self.decoder is None:
            raise RuntimeError(
                "predict(z) needs the CLS bottleneck: this student has bottleneck='none', so its heads read "
                "the backbone's patch tokens and z alone does not determine them; call student(images) instead"
            )
        if not z.is_floating_point():
            z = self.codes_to_z(z)
        if z.ndim != 2 or z.shape[1] != self.config.d_z:
            raise ValueError(f"z must be [B, {self.config.d_z}], got {tuple(z.shape)}")
        size = image_size if image_size is not None else self.config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"image_size {(height, width)} is not a multiple of the patch size {p}")
        z = z.to(self.device)
        out, _ = self._heads(z, self.decoder(z, (height // p, width // p)))
        if denormalize:
            out.features = self.denormalize(out.features)
        return out

    def denormalize(self, features: Mapping[str, TeacherOutput]) -> dict[str, TeacherOutput]:
        """Stats-normalised features -> each teacher's raw feature space."""
        if self.stats is None:
            raise RuntimeError(
                "this student has no feature stats to denormalise with; load it with Student.from_pretrained(dir) "
                "or call student.set_stats(stats)"
            )
        return {name: self.stats[name].denormalize(out) for name, out in features.items()}

    def set_stats(self, stats: Mapping[str, FeatureStats]) -> None:
        """Attach the per-teacher stats the student was trained with (checked against its teacher specs)."""
        self.stats = check_stats(self.config, stats)

    def _heads(self, z: torch.Tensor, tokens: torch.Tensor) -> tuple[StudentOutput, torch.Tensor | None]:
        """Every output, and the pixel head's output before the sprites are drawn (what they search over)."""
        features = {name: head(tokens, z) for name, head in self.heads.items()}
        undrawn = pixels = None if self.pixel_head is None else self.pixel_head(tokens)
        if pixels is not None and self.sprites is not None:
            pixels = self.sprites(pixels, points_from_z(z[:, z.shape[1] - 2 * self.config.z_keypoints :]))
        return StudentOutput(z=z, features=features, pixels=pixels), undrawn

    def save_pretrained(self, directory: str | Path, stats: Mapping[str, FeatureStats]) -> None:
        """Write ``config.json``, ``model.safetensors`` and ``stats/<teacher>.safetensors`` atomically.

        ``stats`` are the per-teacher FeatureStats the training targets were normalised with.
        """
        write_checkpoint(directory, self.config, self.state_dict(), stats)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str | None = None) -> Student:
        """Rebuild a saved student strictly: any missing, extra or wrong-shape tensor is an error.

        The backbone is not re-initialised from ``config.pretrained``: every weight comes from the folder.
        """
        config = read_config(directory)
        student = cls(config, load_pretrained=False)
        load_state_strict(student, Path(directory) / WEIGHTS_NAME)
        student.set_stats(read_stats(directory, config))
        student.eval()  # inference: z batch norm uses its saved statistics
        return student.to(device) if device is not None else student
