"""Teacher family ``depth_anything``: transformers ``DepthAnythingForDepthEstimation`` (V1 or V2).

Target features: exactly what the depth head consumes. The neck reads the DINOv2 backbone's
hidden states at ``backbone_config.out_indices`` (four layers, layer-normed, the
``feature_maps`` of ``Dinov2Backbone``); its reassemble stage drops their CLS token and reshapes
the patch tokens to the grid. Those four patch-token maps, concatenated on channels in
out_indices order, are the patch target ``[B, h, w, 4 * C_backbone]`` at the backbone grid
(Depth-Anything-V2-Small at 224 px: 16x16 x 1536). The neck and head read nothing else, so
:meth:`DepthAnythingTeacher.depth_from_features` splits the channels back and runs the model's
own neck and head: fed the teacher's own features it reproduces ``predicted_depth`` exactly.

``cls`` is None: the depth head never reads the backbone CLS (the reassemble stage drops it),
and a global DINOv2 summary is already the ``dinov2`` teacher's target.

Input size: ``min(backbone_config.image_size, 224)`` unless given, i.e. the shared 224 px ViT
teacher resolution (16x16 at patch 14, like ``dinov2``) for the real models (whose DINOv2 was
trained at 518 and interpolates its position embeddings), and the model's own size for
miniatures. Pass ``input_size`` to :func:`load_depth_anything` to run at the processor's 518
(37x37 x 1536: about 4 MB per image in bf16, hence not the default).

Mean/std come from the checkpoint's ``preprocessor_config.json`` when it has one, else
ImageNet's (what every Depth-Anything processor uses).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers._hf import (
    Triple,
    load_pretrained,
    normalization,
    read_preprocessor,
    seeded,
    square_size,
)
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher

TINY_SEED = 0
DEFAULT_INPUT_SIZE = 224  # the shared ViT teacher resolution
IMAGENET_MEAN: Triple = (IMAGENET_DEFAULT_MEAN[0], IMAGENET_DEFAULT_MEAN[1], IMAGENET_DEFAULT_MEAN[2])
IMAGENET_STD: Triple = (IMAGENET_DEFAULT_STD[0], IMAGENET_DEFAULT_STD[1], IMAGENET_DEFAULT_STD[2])


class DepthAnythingTeacher(Teacher):
    """Depth-Anything: the backbone feature maps its neck reads, and the depth decoder on them."""

    def __init__(
        self,
        model: Any,
        mean: Triple = IMAGENET_MEAN,
        std: Triple = IMAGENET_STD,
        input_size: int | None = None,
    ) -> None:
        config = model.config
        backbone = config.backbone_config
        patch = square_size(config.patch_size, "depth_anything patch_size")
        size = input_size or min(square_size(backbone.image_size, "backbone image_size"), DEFAULT_INPUT_SIZE)
        if size % patch:
            raise ValueError(
                f"teacher 'depth_anything': input_size {size} is not a multiple of the patch size {patch}"
            )
        num_maps = len(config.neck_hidden_sizes)
        if len(backbone.out_indices) != num_maps:
            raise ValueError(
                f"teacher 'depth_anything': backbone out_indices {backbone.out_indices} must give one map per "
                f"neck stage ({num_maps})"
            )
        spec = TeacherSpec(
            name="depth_anything",
            input_size=size,
            mean=mean,
            std=std,
            grid=(size // patch, size // patch),
            channels=num_maps * int(backbone.hidden_size),
            cls_channels=None,
        )
        super().__init__(spec)
        self.model = model
        self.patch_size = patch
        self.backbone_channels = int(backbone.hidden_size)

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        maps = self.model.backbone(pixel_values).feature_maps  # each [B, 1 + h*w, C] (CLS first)
        batch = pixel_values.shape[0]
        h, w = pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size
        for fmap in maps:
            if fmap.ndim != 3 or fmap.shape[1] != 1 + h * w:
                raise RuntimeError(
                    f"teacher 'depth_anything': backbone map {tuple(fmap.shape)} is not [B, 1 + {h}*{w}, C]; "
                    "only DINOv2 backbones with reshape_hidden_states=False (as in Depth-Anything) are supported"
                )
        patch = torch.cat([fmap[:, 1:].reshape(batch, h, w, -1) for fmap in maps], dim=-1)
        return TeacherOutput(patch=patch, cls=None)

    @torch.inference_mode()
    def depth_from_features(self, features: TeacherOutput, image_size: int | None = None) -> torch.Tensor:
        """Relative (or metric) depth ``[B, S, S]`` from ``patch`` features via the model's neck + head.

        S is the teacher's input size, or ``image_size`` when given (bilinear resize of the
        model's output).
        """
        patch = features.patch
        h, w = self.spec.grid
        if patch.ndim != 4 or tuple(patch.shape[1:]) != (h, w, self.spec.channels):
            raise ValueError(
                f"teacher 'depth_anything': features must be [B, {h}, {w}, {self.spec.channels}], "
                f"got {tuple(patch.shape)}"
            )
        dtype = next(self.model.parameters()).dtype
        x = patch.to(self.device, dtype)
        batch = x.shape[0]
        # The reassemble stage drops token 0 (the CLS), so its slot can hold anything: zeros.
        cls_slot = x.new_zeros(batch, 1, self.backbone_channels)
        hidden = [
            torch.cat([cls_slot, chunk.reshape(batch, h * w, self.backbone_channels)], dim=1)
            for chunk in x.split(self.backbone_channels, dim=-1)
        ]
        fused = self.model.neck(hidden, h, w)
        depth: torch.Tensor = self.model.head(fused, h, w)  # [B, h * patch, w * patch]
        if image_size is not None and tuple(depth.shape[-2:]) != (image_size, image_size):
            depth = F.interpolate(
                depth[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False
            )[:, 0]
        return depth


def tiny_depth_anything_config() -> Any:
    """A DepthAnythingConfig with a 4-layer, 32-wide DINOv2 backbone at 56 px (4x4 grid)."""
    from transformers import DepthAnythingConfig

    backbone = {  # resolved to a Dinov2Config by DepthAnythingConfig, as in the hub configs
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "mlp_ratio": 2,
        "image_size": 56,
        "patch_size": 14,
        "out_indices": [1, 2, 3, 4],
        "reshape_hidden_states": False,
    }
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )


def build_tiny_depth_anything() -> DepthAnythingTeacher:
    from transformers import DepthAnythingForDepthEstimation

    with seeded(TINY_SEED):
        model = DepthAnythingForDepthEstimation(tiny_depth_anything_config()).eval()
    return DepthAnythingTeacher(model)


def load_depth_anything(weights: str, input_size: int | None = None) -> DepthAnythingTeacher:
    """A hub id or local ``save_pretrained`` directory of DepthAnythingForDepthEstimation, strictly."""
    from transformers import DepthAnythingForDepthEstimation

    model = load_pretrained("depth_anything", weights, {"depth_anything": DepthAnythingForDepthEstimation})
    mean, std = normalization(read_preprocessor(weights), IMAGENET_MEAN, IMAGENET_STD)
    return DepthAnythingTeacher(model, mean, std, input_size=input_size)


register_teacher(
    TeacherEntry(
        name="depth_anything",
        default_weights="depth-anything/Depth-Anything-V2-Small-hf",
        build_tiny=build_tiny_depth_anything,
        load_weights=load_depth_anything,
        decoder="depth",
    )
)
