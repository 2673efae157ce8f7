"""Teacher families ``clip`` (open_clip, the default) and ``clip_hf`` (transformers CLIP).

Targets, the same for both:
- patch tokens ``[B, h, w, width]``: the last transformer block's tokens after the final LayerNorm
  (open_clip ``ln_post`` / HF ``post_layernorm``), in the tower's width (1024 for ViT-L). They are the
  tokens open_clip returns with ``output_tokens=True`` (towers configured with ``final_ln_after_pool``
  normalise only the pooled token, and their tokens come as open_clip returns them). The projection is not
  applied to them because it was only trained on the pooled token.
- CLS ``[B, embed_dim]``: the projected image embedding, the vector that aligns with text
  (``encode_image`` / ``image_embeds``; 768 for ViT-L-14).

``clip`` ``weights`` strings (open_clip needs an architecture *and* a weight source):
- ``ARCH:TAG``: a built-in open_clip architecture and a pretrained tag, e.g. ``ViT-L-14:openai`` (the
  default) or ``ViT-L-14:laion2b_s32b_b82k``; downloaded through open_clip's hub cache. The tag's own
  preprocessing (mean/std) and activation (QuickGELU for OpenAI weights) are applied.
- ``ARCH:FILE``: an architecture and a full open_clip checkpoint file (``.safetensors`` preferred;
  ``.bin``/``.pt``/``.pth`` are read with ``torch.load(weights_only=True)``), e.g.
  ``ViT-L-14-quickgelu:/ckpt/open_clip_model.safetensors``. A file carries no preprocessing, so open_clip's
  defaults (OpenAI mean/std) apply; use ``local-dir:`` for others. ``ARCH`` may also be
  ``distill-tiny-ViT``, the tiny architecture below (that is how a saved tiny model is reloaded).
- ``local-dir:DIR``: a directory with ``open_clip_config.json`` (architecture + preprocessing) and weights.
- ``hf-hub:ORG/REPO``: an open_clip repository on the Hugging Face hub.
Loading is always strict (a missing or unexpected key is an error). Only ViT towers whose tokens form a
grid are accepted (not ResNet, timm or attention-pooled CoCa towers). The text tower is dropped after
loading.

``clip_hf`` ``weights``: a hub id (default ``openai/clip-vit-large-patch14``) or a local ``save_pretrained``
directory of either a ``CLIPVisionModelWithProjection`` or a full ``CLIPModel`` (whose text tower is ignored).

Geometry (both): input size and patch size from the model (224 and 14 for ViT-L-14: a 16x16 grid);
mean/std from the tag / open_clip config / ``preprocessor_config.json``, else OpenAI's CLIP statistics.
Tiny (both): width 32, 2 layers, patch 14 at 56 px (a 4x4 x 32 grid), CLS of 24 channels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import open_clip
import torch
from open_clip.transformer import VisionTransformer
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers._hf import (
    OFFLINE_HINT,
    load_pretrained,
    looks_like_path,
    normalization,
    read_preprocessor,
    seeded,
    square_size,
    tokens_to_grid,
    vit_spec,
)
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher

NAME = "clip"
DEFAULT_WEIGHTS = "ViT-L-14:openai"
HF_NAME = "clip_hf"
HF_DEFAULT_WEIGHTS = "openai/clip-vit-large-patch14"

TINY_ARCH = "distill-tiny-ViT"
SCHEMES = ("local-dir:", "hf-hub:")
CHECKPOINT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}
HF_TEXT_TOWER_KEYS = ("text_model.", "text_projection.", "logit_scale")  # in full CLIPModel checkpoints

T = TypeVar("T")


def tiny_model_config() -> dict[str, Any]:
    """open_clip model config of the tiny architecture (the format of open_clip's model_configs/*.json)."""
    return {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": 56,
            "patch_size": 14,
            "width": 32,
            "layers": 2,
            "head_width": 16,
            "mlp_ratio": 2.0,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }


def tiny_clip_model() -> Any:
    """Seeded random-init open_clip ``CLIP`` of the tiny architecture (text tower included, so its
    state dict is a complete open_clip checkpoint that ``distill-tiny-ViT:FILE`` loads back)."""
    with seeded(0):
        return open_clip.CLIP(**tiny_model_config()).eval()


def open_clip_spec(model: Any) -> TeacherSpec:
    """Spec of an open_clip model's ViT tower; mean/std from its preprocess config (default OpenAI)."""
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"teacher {NAME!r}: the vision tower is a {type(visual).__name__}; only open_clip "
            "VisionTransformer towers give a patch-token grid (pick a ViT architecture)"
        )
    if visual.attn_pool is not None or visual.pool_type == "none":
        raise ValueError(
            f"teacher {NAME!r}: this tower pools with attention / no pooling, so its tokens are not "
            "a spatial patch grid; pick a plain CLIP ViT architecture"
        )
    preprocess = open_clip.get_model_preprocess_cfg(model)
    given = {f"image_{key}": preprocess[key] for key in ("mean", "std") if key in preprocess}
    mean, std = normalization(given, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    width = int(visual.conv1.out_channels)
    grid = (int(visual.grid_size[0]), int(visual.grid_size[1]))
    return TeacherSpec(
        name=NAME,
        input_size=square_size(visual.image_size, "open_clip image_size"),
        mean=mean,
        std=std,
        grid=grid,
        channels=width,
        cls_channels=int(visual.proj.shape[1]) if visual.proj is not None else width,
    )


class OpenClipTeacher(Teacher):
    """open_clip ViT tower: ``ln_post`` patch tokens and the projected image embedding."""

    def __init__(self, model: Any) -> None:
        super().__init__(open_clip_spec(model))
        self.visual: VisionTransformer = model.visual
        self.visual.output_tokens = True  # forward returns (pooled @ proj, ln_post tokens)

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        pooled, tokens = self.visual(pixel_values)
        return TeacherOutput(patch=tokens_to_grid(tokens, self.spec), cls=pooled)


def _open_clip_call(weights: str, load: Callable[[], T]) -> T:
    """Run an open_clip load; its RuntimeErrors become errors naming the teacher and the cause."""
    try:
        return load()
    except RuntimeError as err:
        if "state_dict" in str(err):
            raise ValueError(
                f"teacher {NAME!r}: the checkpoint in {weights!r} does not match its architecture (strict "
                f"loading: the file must be a complete open_clip checkpoint of that ARCH): {err}"
            ) from err
        raise OSError(f"teacher {NAME!r}: could not load {weights!r}: {err}; {OFFLINE_HINT}") from err


def load_open_clip(weights: str) -> Any:
    """An open_clip CLIP model from a ``weights`` string (formats in the module docstring)."""
    if weights.startswith(SCHEMES):
        if (
            weights.startswith("local-dir:")
            and not Path(weights.removeprefix("local-dir:")).expanduser().is_dir()
        ):
            raise FileNotFoundError(
                f"teacher {NAME!r}: no open_clip directory at {weights.removeprefix('local-dir:')!r}"
            )
        return _open_clip_call(
            weights, lambda: open_clip.create_model(weights, require_pretrained=True, weights_only=True)
        )
    arch, sep, source = weights.partition(":")
    if not sep or not arch or not source:
        raise ValueError(
            f"teacher {NAME!r}: weights {weights!r} must be 'ARCH:TAG' (e.g. {DEFAULT_WEIGHTS!r}), 'ARCH:FILE', "
            "'local-dir:DIR' or 'hf-hub:ORG/REPO'; an architecture alone would be random weights"
        )
    path = Path(source).expanduser()
    is_file = path.is_file()
    if not is_file and (looks_like_path(source) or path.suffix in CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(
            f"teacher {NAME!r}: no checkpoint file at {source!r} (from weights {weights!r})"
        )
    if arch == TINY_ARCH:
        if not is_file:
            raise ValueError(
                f"teacher {NAME!r}: {TINY_ARCH} has no pretrained tags; give a checkpoint file, got {source!r}"
            )
        model = tiny_clip_model()
        _open_clip_call(
            weights, lambda: open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        )
        return model
    if arch not in open_clip.list_models():
        raise ValueError(
            f"teacher {NAME!r}: {arch!r} is not an open_clip architecture (see open_clip.list_models())"
        )
    quick_gelu = False
    if not is_file:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if source not in tags:
            raise ValueError(
                f"teacher {NAME!r}: {source!r} is neither a file nor a pretrained tag of {arch}; known tags: {', '.join(tags)}"
            )
        quick_gelu = bool(open_clip.get_pretrained_cfg(arch, source).get("quick_gelu", False))
    pretrained = str(path) if is_file else source
    return _open_clip_call(
        weights,
        lambda: open_clip.create_model(
            arch,
            pretrained=pretrained,
            force_quick_gelu=quick_gelu,
            require_pretrained=True,
            weights_only=True,
        ),
    )


def build_tiny() -> OpenClipTeacher:
    """The tiny open_clip teacher: the ViT tower of :func:`tiny_clip_model`."""
    return OpenClipTeacher(tiny_clip_model())


def load_weights(weights: str) -> OpenClipTeacher:
    """``ARCH:TAG``, ``ARCH:FILE``, ``local-dir:DIR`` or ``hf-hub:ORG/REPO`` (see the module docstring)."""
    return OpenClipTeacher(load_open_clip(weights).eval())


def tiny_hf_config() -> CLIPVisionConfig:
    """The tiny ``clip_hf`` config (a fresh object each call: models keep a reference to theirs)."""
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        projection_dim=24,
    )


def hf_clip_spec(config: Any, preprocessor: dict[str, Any]) -> TeacherSpec:
    """Input size = config.image_size (fixed position embeddings); CLS = projection_dim channels."""
    return vit_spec(
        HF_NAME,
        config,
        preprocessor,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        cls_channels=int(config.projection_dim),
    )


class HfClipTeacher(Teacher):
    """transformers CLIP vision tower: ``post_layernorm`` patch tokens and the projected image embedding."""

    def __init__(self, model: CLIPVisionModelWithProjection, spec: TeacherSpec) -> None:
        super().__init__(spec)
        self.model = model

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        out = self.model(pixel_values=pixel_values)
        tokens = self.model.vision_model.post_layernorm(out.last_hidden_state[:, 1:])
        return TeacherOutput(patch=tokens_to_grid(tokens, self.spec), cls=out.image_embeds)


def build_tiny_hf() -> HfClipTeacher:
    """Seeded random-init CLIPVisionModelWithProjection miniature."""
    with seeded(0):
        model = CLIPVisionModelWithProjection(tiny_hf_config()).eval()
    return HfClipTeacher(model, hf_clip_spec(model.config, {}))


def load_weights_hf(weights: str) -> HfClipTeacher:
    """A hub id or local directory of a CLIP vision (``clip_vision_model``) or full CLIP (``clip``) checkpoint."""
    classes = {"clip_vision_model": CLIPVisionModelWithProjection, "clip": CLIPVisionModelWithProjection}
    model = load_pretrained(HF_NAME, weights, classes, ignore_unexpected=HF_TEXT_TOWER_KEYS)
    return HfClipTeacher(model, hf_clip_spec(model.config, read_preprocessor(weights)))


register_teacher(TeacherEntry(NAME, DEFAULT_WEIGHTS, build_tiny, load_weights, decoder=None))
register_teacher(TeacherEntry(HF_NAME, HF_DEFAULT_WEIGHTS, build_tiny_hf, load_weights_hf, decoder=None))
