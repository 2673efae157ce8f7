"""The five default teachers at their real sizes: real architectures with random weights, no hub needed.

A forward pass costs the same whatever the weights, so throughput and memory measured with these
are those of the published models (``--weights`` in gpu.py loads the real ones instead). The sizes
are those of the registry's default weights: open_clip ViT-L-14, DINOv2 ViT-L/14 and MAE ViT-L/16
at 224 px, SAM ViT-H at 1024 px, Depth-Anything-V2-Small (DINOv2 ViT-S/14 backbone) at 224 px.
"""

from __future__ import annotations

from collections.abc import Callable

import open_clip
import torch
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    Dinov2Model,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from distill.teachers import Teacher, load_teacher
from distill.teachers.clip import OpenClipTeacher
from distill.teachers.depth_anything import DepthAnythingTeacher
from distill.teachers.dinov2 import Dinov2Teacher, dinov2_spec
from distill.teachers.mae import MaeTeacher, mae_spec
from distill.teachers.sam import SamTeacher
from distill.teachers.sam_arch import SAM_ARCHS, build_sam_model


def _clip() -> Teacher:
    return OpenClipTeacher(open_clip.create_model("ViT-L-14", pretrained=None))


def _dinov2() -> Teacher:
    config = Dinov2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=14
    )
    return Dinov2Teacher(Dinov2Model(config), dinov2_spec(config, {}))


def _mae() -> Teacher:
    config = ViTMAEConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=224,
        patch_size=16,
        mask_ratio=0.0,
    )
    return MaeTeacher(ViTMAEForPreTraining(config), mae_spec(config, {}))


def _sam() -> Teacher:
    return SamTeacher(build_sam_model(SAM_ARCHS["vit_h"]))


def _depth_anything() -> Teacher:
    backbone = {
        "model_type": "dinov2",
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "image_size": 518,
        "patch_size": 14,
        "out_indices": [3, 6, 9, 12],
        "reshape_hidden_states": False,
    }
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=384,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
    )
    return DepthAnythingTeacher(DepthAnythingForDepthEstimation(config), input_size=224)


BUILDERS: dict[str, Callable[[], Teacher]] = {
    "clip": _clip,
    "dinov2": _dinov2,
    "mae": _mae,
    "sam": _sam,
    "depth_anything": _depth_anything,
}


def real_size_teacher(name: str, device: torch.device) -> Teacher:
    """Random weights, drawn on ``device`` (a 636M-parameter SAM initialises in seconds there)."""
    torch.manual_seed(0)
    with device:
        teacher = BUILDERS[name]()
    return teacher.to(device).freeze()


def build_teachers(
    names: tuple[str, ...], kind: str, device: torch.device, weights: dict[str, str]
) -> dict[str, Teacher]:
    """``kind``: ``tiny`` (the test miniatures), ``random`` (real sizes above) or ``hub`` (real weights:
    ``weights[name]``, else the registry default, from a local directory, file or reachable hub)."""
    if kind == "tiny":
        return {name: load_teacher(name, "tiny", device=device) for name in names}
    if kind == "hub":
        return {name: load_teacher(name, "hub", weights.get(name), device=device) for name in names}
    return {name: real_size_teacher(name, device) for name in names}
