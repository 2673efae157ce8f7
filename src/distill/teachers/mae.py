"""Teacher family ``mae``: transformers ViTMAEForPreTraining (default ``facebook/vit-mae-large``).

Targets: the MAE encoder's last hidden state (after its final layernorm) with *no* masking: the patch
tokens ``[B, h, w, C]`` and the CLS token ``[B, C]`` (``C = hidden_size``, 1024 for ViT-L).

No masking, raster order: the loaded config's ``mask_ratio`` is set to 0, and because HF's ViTMAE still
shuffles the tokens by ``argsort(noise)`` (random noise when none is given) even then, every call passes
``noise = arange(h*w)``: ``argsort`` of it is the identity, so the tokens stay in raster order and
``ids_restore`` is ``arange`` too. Features are therefore deterministic and spatially aligned.

Decoder: :meth:`MaeTeacher.reconstruct` runs the checkpoint's own MAE decoder on features (a CLS token and
a full grid, as this teacher or a student produces them), unpatchifies and undoes the input normalisation:
``[B, 3, S, S]`` in [0, 1] at the teacher's input size ``S``. Checkpoints trained with ``norm_pix_loss``
predict each patch standardised by *that patch's* mean and variance, which the features do not carry:
their reconstruction needs ``reference_images`` to take those per-patch statistics from (exactly what
the MAE loss compares against), and without them ``reconstruct`` refuses rather than inventing colours.

Geometry: input size = ``config.image_size`` (ViTMAE's encoder and decoder position embeddings are fixed
to it), grid = input / patch: 14x14 x 1024 for ViT-L/16 at 224. Mean/std from ``preprocessor_config.json``,
else ImageNet's.

``weights``: a hub model id (``facebook/vit-mae-large``) or a local ``save_pretrained`` directory.
Tiny: ``ViTMAEForPreTraining`` with hidden size 32, 2 encoder layers + 1 decoder layer, patch 8 at 64 px:
an 8x8 x 32 grid.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from distill.features import TeacherOutput, TeacherSpec
from distill.geometry import check_image_batch
from distill.teachers._hf import (
    load_pretrained,
    read_preprocessor,
    seeded,
    tokens_to_grid,
    vit_spec,
)
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher

NAME = "mae"
DEFAULT_WEIGHTS = "facebook/vit-mae-large"
NORM_PIX_EPS = 1.0e-6  # the epsilon ViTMAEForPreTraining uses for its norm_pix_loss targets


def tiny_config() -> ViTMAEConfig:
    """The tiny teacher's config (a fresh object each call: models keep a reference to theirs)."""
    return ViTMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        image_size=64,
        patch_size=8,
        mask_ratio=0.0,
    )


def mae_spec(config: Any, preprocessor: dict[str, Any]) -> TeacherSpec:
    """Input size = config.image_size (fixed position embeddings); channels = hidden size."""
    return vit_spec(
        NAME,
        config,
        preprocessor,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        cls_channels=int(config.hidden_size),
    )


class MaeTeacher(Teacher):
    """Unmasked MAE encoder features in raster order, plus the MAE decoder to turn them into pixels."""

    def __init__(self, model: ViTMAEForPreTraining, spec: TeacherSpec) -> None:
        super().__init__(spec)
        if model.config.mask_ratio != 0.0:
            raise ValueError(
                f"teacher {NAME!r}: the MAE teacher needs mask_ratio 0, the model has {model.config.mask_ratio}"
            )
        self.model = model
        self.num_patches = spec.grid[0] * spec.grid[1]

    def raster_noise(self, batch: int, device: torch.device) -> torch.Tensor:
        """Noise whose argsort is the identity, so ViTMAE keeps (and restores) tokens in raster order."""
        return torch.arange(self.num_patches, device=device, dtype=torch.float32).expand(batch, -1)

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        noise = self.raster_noise(pixel_values.shape[0], pixel_values.device)
        hidden = self.model.vit(pixel_values=pixel_values, noise=noise).last_hidden_state
        return TeacherOutput(patch=tokens_to_grid(hidden[:, 1:], self.spec), cls=hidden[:, 0])

    def _check_features(self, features: TeacherOutput) -> None:
        height, width = self.spec.grid
        expected = (height, width, self.spec.channels)
        if features.patch.ndim != 4 or tuple(features.patch.shape[1:]) != expected:
            raise ValueError(
                f"MAE reconstruct needs patch features [B, {height}, {width}, {self.spec.channels}], got {tuple(features.patch.shape)}"
            )
        if features.cls is None or tuple(features.cls.shape) != (features.patch.shape[0], self.spec.channels):
            got = None if features.cls is None else tuple(features.cls.shape)
            raise ValueError(
                f"MAE reconstruct needs the CLS feature [B, {self.spec.channels}] (its decoder reads it), got {got}"
            )

    @property
    def needs_reference_images(self) -> bool:
        """A ``norm_pix_loss`` checkpoint's decoder predicts each patch standardised by its own mean and
        variance, which only the input image can supply (see :meth:`reconstruct`)."""
        return bool(self.model.config.norm_pix_loss)

    @torch.inference_mode()
    def reconstruct(
        self, features: TeacherOutput, reference_images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Features -> ``[B, 3, S, S]`` float in [0, 1] through the checkpoint's own MAE decoder.

        ``reference_images`` (canonical-view images, as given to ``forward``) are required for, and only
        accepted by, ``norm_pix_loss`` checkpoints: they supply the per-patch mean/variance the decoder's
        standardised output is undone with.
        """
        self._check_features(features)
        assert features.cls is not None
        batch = features.patch.shape[0]
        patch = features.patch.to(self.device, torch.float32).reshape(
            batch, self.num_patches, self.spec.channels
        )
        tokens = torch.cat([features.cls.to(self.device, torch.float32)[:, None], patch], dim=1)
        ids_restore = torch.arange(self.num_patches, device=self.device).expand(batch, -1)
        logits = self.model.decoder(tokens, ids_restore).logits
        if self.needs_reference_images:
            if reference_images is None:
                raise ValueError(
                    f"teacher {NAME!r}: this checkpoint was trained with norm_pix_loss, so its decoder predicts "
                    "per-patch standardised pixels; pass reference_images to un-standardise them with each "
                    "patch's own mean/variance, or use a checkpoint with norm_pix_loss=false"
                )
            check_image_batch(reference_images, "reference_images")
            if reference_images.shape[0] != batch:
                raise ValueError(
                    f"reference_images has {reference_images.shape[0]} images for {batch} feature rows"
                )
            target = self.model.patchify(self.preprocess(reference_images))
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            logits = logits * (var + NORM_PIX_EPS) ** 0.5 + mean
        elif reference_images is not None:
            raise ValueError(
                f"teacher {NAME!r}: reference_images are only used by norm_pix_loss checkpoints; this one "
                "predicts plain normalised pixels, so drop the argument"
            )
        pixels = self.model.unpatchify(logits)
        mean_t = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        return (pixels * std_t + mean_t).clamp(0.0, 1.0)


def build_tiny() -> MaeTeacher:
    """Seeded random-init ViTMAEForPreTraining miniature (same class as the real teacher)."""
    with seeded(0):
        model = ViTMAEForPreTraining(tiny_config()).eval()
    return MaeTeacher(model, mae_spec(model.config, {}))


def load_weights(weights: str) -> MaeTeacher:
    """A hub id or local directory holding a ``vit_mae`` pre-training checkpoint (encoder + decoder)."""
    model = load_pretrained(
        NAME, weights, {"vit_mae": ViTMAEForPreTraining}, config_overrides={"mask_ratio": 0.0}
    )
    return MaeTeacher(model, mae_spec(model.config, read_preprocessor(weights)))


register_teacher(TeacherEntry(NAME, DEFAULT_WEIGHTS, build_tiny, load_weights, decoder="pixels"))
