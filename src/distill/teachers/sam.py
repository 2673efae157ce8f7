"""Teacher families ``sam`` (segment-anything) and ``sam_hf`` (transformers ``SamModel``).

Target features: the image encoder's output (``[B, 256, 64, 64]`` for the official models at
1024 px), returned as ``patch [B, h, w, C]``; SAM has no summary token, so ``cls`` is None.

The canonical view is already square, so SAM's "resize the long side and pad" preprocessing
reduces to a resize to ``image_encoder.img_size`` (no padding) and SAM's pixel mean/std, which
``TeacherSpec`` holds in [0, 1] units.

``sam`` weights strings are ``[MODEL_TYPE:]PATH`` with MODEL_TYPE one of :data:`SAM_ARCHS`
(``vit_b``, ``vit_l``, ``vit_h``, ``tiny``) and PATH an official pickled ``.pth`` state dict
(read with ``torch.load(weights_only=True)``) or a ``.safetensors`` file. Without a type, the
type is inferred by matching the state dict's key names and shapes against every known type:
every shape a checkpoint holds (embed dim, depth, windowed vs global blocks through the
relative-position tables, output channels) is fixed per type, so exactly one type matches a
valid checkpoint. Loading is strict: a missing, unexpected or wrong-shaped key is an error.

``SamTeacher`` also decodes embeddings back into masks through SAM's real prompt encoder, mask
decoder and ``SamAutomaticMaskGenerator``: the embedding (from the teacher or from a student)
is placed in a ``SamPredictor``'s state where its ``set_image`` would have put the encoder
output. ``sam_hf`` is the transformers alternative for feature extraction only (no decoder).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.predictor import SamPredictor
from torch import nn

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
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # 0-255 units, as segment-anything stores them
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def _unit_rgb(values: Sequence[float] | torch.Tensor) -> Triple:
    """SAM's 0-255 pixel mean/std -> [0, 1] units, rounded past float32 noise of the model's buffers."""
    r, g, b = (
        round(float(v) / 255.0, 6) for v in (values.flatten() if isinstance(values, torch.Tensor) else values)
    )
    return (r, g, b)


SAM_MEAN_UNIT = _unit_rgb(SAM_PIXEL_MEAN)  # = ImageNet's, which transformers' SamImageProcessor uses
SAM_STD_UNIT = _unit_rgb(SAM_PIXEL_STD)
SAM_CHECKPOINT_URLS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}


@dataclass(frozen=True)
class SamArch:
    """Every size of a segment-anything model; defaults are those of the official checkpoints."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256  # = image embedding channels = mask decoder width
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


SAM_ARCHS: dict[str, SamArch] = {
    # The official sizes, as in segment_anything.build_sam.
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    # The offline miniature: 64 px, 8x8 grid of 32 channels, one windowed and one global block.
    "tiny": SamArch(
        32,
        2,
        2,
        (1,),
        image_size=64,
        patch_size=8,
        window_size=4,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ),
}


def build_sam_model(arch: SamArch) -> Sam:
    """segment-anything's ``_build_sam`` with every size taken from ``arch`` (no checkpoint)."""
    grid = arch.image_size // arch.patch_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    return model.eval()


@functools.cache
def _arch_shapes(model_type: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a model type's state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build_sam_model(SAM_ARCHS[model_type])
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def state_dict_mismatch(
    expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor]
) -> list[str]:
    """Human-readable differences between a model's expected key shapes and a state dict."""

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key} {tuple(state[key].shape)} (model {expected[key]})"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != expected[key]
    ]
    if missing:
        problems.append(f"missing keys: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listed(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {listed(wrong)}")
    return problems


def read_state_dict(path: Path, teacher: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a plain pickled state dict (``weights_only=True``)."""
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            loaded: object = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, or not a torch / safetensors file at all
        raise ValueError(
            f"teacher {teacher!r}: cannot read {path} as a state dict ({type(exc).__name__}: {exc}); pass the "
            "official .pth checkpoint (read with torch.load(weights_only=True)) or a .safetensors file"
        ) from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(
            f"teacher {teacher!r}: {path} holds a {type(loaded).__name__}, not a state dict of tensors; "
            "pass the official segment-anything checkpoint (a plain state dict) or a .safetensors file"
        )
    return dict(loaded)


def parse_sam_weights(weights: str) -> tuple[str | None, Path]:
    """``"vit_h:/path/ckpt.pth"`` -> ("vit_h", path); ``"/path/ckpt.pth"`` -> (None, path)."""
    model_type, sep, rest = weights.partition(":")
    if sep and model_type in SAM_ARCHS:
        return model_type, Path(rest).expanduser()
    return None, Path(weights).expanduser()


def infer_sam_type(state: Mapping[str, torch.Tensor], source: str) -> str:
    """The one model type whose key names and shapes equal the state dict's, or a ValueError."""
    mismatches = {name: state_dict_mismatch(_arch_shapes(name), state) for name in SAM_ARCHS}
    for name, problems in mismatches.items():
        if not problems:
            return name

    def fitting(name: str) -> int:
        return sum(
            key in state and tuple(state[key].shape) == shape for key, shape in _arch_shapes(name).items()
        )

    closest = max(SAM_ARCHS, key=fitting)
    raise ValueError(
        f"teacher 'sam': {source} matches no segment-anything model type ({', '.join(SAM_ARCHS)}); "
        f"closest is {closest}: {'; '.join(mismatches[closest])}. Pass an official SAM checkpoint "
        "(a state dict of segment_anything.modeling.Sam)"
    )


def load_sam_checkpoint(weights: str) -> SamTeacher:
    """Build a ``SamTeacher`` from ``[MODEL_TYPE:]PATH`` (``.pth`` or ``.safetensors``), strictly."""
    model_type, path = parse_sam_weights(weights)
    if path.is_dir():
        raise ValueError(
            f"teacher 'sam': {path} is a directory, but segment-anything checkpoints are single files "
            "(.pth or .safetensors); a transformers SamModel directory loads with teacher 'sam_hf'"
        )
    if not path.is_file():
        url = SAM_CHECKPOINT_URLS[model_type or "vit_h"] if model_type != "tiny" else None
        fix = (
            f"download the official checkpoint ({url}) and pass its path" if url else "pass a checkpoint file"
        )
        raise FileNotFoundError(
            f"teacher 'sam': no checkpoint file at {str(path)!r} (resolved to {path.resolve()}; weights={weights!r}); "
            f"{fix} as weights='[vit_b|vit_l|vit_h|tiny:]/path/to/checkpoint.pth' (or .safetensors). "
            "Checkpoints are never downloaded automatically."
        )
    state = read_state_dict(path, "sam")
    if model_type is None:
        model_type = infer_sam_type(state, str(path))
    else:
        problems = state_dict_mismatch(_arch_shapes(model_type), state)
        if problems:
            raise ValueError(
                f"teacher 'sam': {path} is not a {model_type} checkpoint: {'; '.join(problems)}. "
                f"Name the right model type ({', '.join(SAM_ARCHS)}) or drop the prefix to infer it"
            )
    model = build_sam_model(SAM_ARCHS[model_type])
    model.load_state_dict(state, strict=True)
    return SamTeacher(model)


def build_tiny_sam() -> SamTeacher:
    """The ``tiny`` model type with a fixed seed; every all-zero init (pos_embed, rel_pos, biases)
    is drawn at random too, so round trip and exactness tests exercise every tensor."""
    with seeded(TINY_SEED):
        model = build_sam_model(SAM_ARCHS["tiny"])
        with torch.no_grad():
            for param in model.parameters():
                if not param.any():
                    param.normal_(0.0, 0.02)
    return SamTeacher(model)


class _EmbeddingPredictor(SamPredictor):
    """A ``SamPredictor`` whose image embedding comes from outside instead of its image encoder.

    ``set_image`` (which ``SamAutomaticMaskGenerator`` calls) reads only the image's size and
    installs ``self.embedding``; everything after it (prompt transforms, prompt encoder, mask
    decoder, mask post-processing) is segment-anything's own code.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__(model)
        self.embedding: torch.Tensor | None = None

    def install(self, embedding: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Put ``embedding`` [1, C, h, w] where ``set_torch_image`` puts the encoder output."""
        self.reset_image()
        self.original_size = original_size
        self.input_size = self.transform.get_preprocess_shape(
            *original_size, self.model.image_encoder.img_size
        )
        self.features = embedding
        self.is_image_set = True

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if self.embedding is None:
            raise RuntimeError("_EmbeddingPredictor.set_image called before an embedding was given")
        self.install(self.embedding, (int(image.shape[0]), int(image.shape[1])))


def _as_numpy(values: torch.Tensor | np.ndarray | Sequence[Any], dtype: type) -> np.ndarray:
    """Prompt coordinates or labels (tensor, array or nested lists) as a CPU numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


class SamTeacher(Teacher):
    """segment-anything ``Sam``: image encoder output as features, plus its prompt mask decoders."""

    def __init__(self, model: Sam) -> None:
        encoder = model.image_encoder
        patch = int(encoder.patch_embed.proj.kernel_size[0])
        grid = int(encoder.img_size) // patch
        spec = TeacherSpec(
            name="sam",
            input_size=int(encoder.img_size),
            mean=_unit_rgb(model.pixel_mean),
            std=_unit_rgb(model.pixel_std),
            grid=(grid, grid),
            channels=int(encoder.neck[0].out_channels),
            cls_channels=None,
        )
        super().__init__(spec)
        self.model = model

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        embedding = self.model.image_encoder(pixel_values)  # [B, C, h, w]
        return TeacherOutput(patch=embedding.permute(0, 2, 3, 1).contiguous(), cls=None)

    def _embedding_nchw(self, embedding: torch.Tensor, batched: bool) -> torch.Tensor:
        """Check a ``[B, h, w, C]`` (or ``[h, w, C]``) embedding against the spec -> ``[B, C, h, w]``."""
        h, w = self.spec.grid
        expected = ("[B, " if batched else "[") + f"{h}, {w}, {self.spec.channels}]"
        shape = tuple(embedding.shape)
        if shape[-3:] != (h, w, self.spec.channels) or embedding.ndim != (4 if batched else 3):
            raise ValueError(
                f"teacher {self.spec.name!r}: embedding must be {expected} (patch layout of TeacherOutput), "
                f"got {shape}; resample a smaller predicted grid to {h}x{w} before decoding"
            )
        x = embedding if batched else embedding[None]
        return x.to(self.device, torch.float32).permute(0, 3, 1, 2).contiguous()

    @torch.inference_mode()
    def predict_masks(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | np.ndarray | None = None,
        point_labels: torch.Tensor | np.ndarray | None = None,
        boxes: torch.Tensor | np.ndarray | None = None,
        multimask: bool = True,
        image_size: int | None = None,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for point and/or box prompts, one prompt set per image, through SAM's own decoder.

        ``embedding`` [B, h, w, C]; ``points`` [B, N, 2] as (x, y) pixels and ``point_labels``
        [B, N] (1 foreground, 0 background; all foreground when omitted); ``boxes`` [B, 4] as XYXY
        pixels. Coordinates refer to the square ``image_size`` view the masks come back at
        (default: the teacher's input size). Returns ``masks`` [B, K, S, S] (bool, or float logits
        with ``return_logits``) and the predicted IoU ``scores`` [B, K]; K is 3 with ``multimask``
        else 1.
        """
        features = self._embedding_nchw(embedding, batched=True)
        batch = features.shape[0]
        size = image_size or self.spec.input_size
        if points is None and boxes is None:
            raise ValueError(
                f"teacher {self.spec.name!r}: predict_masks needs points and/or boxes as prompts"
            )
        # Prompts stay float64 numpy until SAM's own numpy transforms have mapped them to the model
        # frame, exactly as SamPredictor.predict does (a float32 transform rounds differently).
        coords = labels = box_np = None
        if points is not None:
            coords = _as_numpy(points, np.float64)
            if coords.ndim != 3 or coords.shape[0] != batch or coords.shape[2] != 2:
                raise ValueError(f"points must be [B={batch}, N, 2] (x, y) pixels, got {coords.shape}")
            labels = np.ones(coords.shape[:2]) if point_labels is None else _as_numpy(point_labels, np.int64)
            if labels.shape != coords.shape[:2]:
                raise ValueError(f"point_labels must be [B, N] = {coords.shape[:2]}, got {labels.shape}")
        elif point_labels is not None:
            raise ValueError("point_labels were given without points")
        if boxes is not None:
            box_np = _as_numpy(boxes, np.float64)
            if box_np.shape != (batch, 4):
                raise ValueError(f"boxes must be [B={batch}, 4] XYXY pixels, got {box_np.shape}")

        predictor = _EmbeddingPredictor(self.model)
        transform, frame, device = predictor.transform, (size, size), self.device
        all_masks, all_scores = [], []
        for b in range(batch):
            predictor.install(features[b : b + 1], frame)
            masks, scores, _ = predictor.predict_torch(
                None
                if coords is None
                else torch.as_tensor(
                    transform.apply_coords(coords[b : b + 1], frame), dtype=torch.float, device=device
                ),
                None
                if labels is None
                else torch.as_tensor(labels[b : b + 1], dtype=torch.int, device=device),
                None
                if box_np is None
                else torch.as_tensor(
                    transform.apply_boxes(box_np[b], frame), dtype=torch.float, device=device
                ),
                multimask_output=multimask,
                return_logits=return_logits,
            )
            all_masks.append(masks[0])
            all_scores.append(scores[0])
        return torch.stack(all_masks), torch.stack(all_scores)

    @torch.inference_mode()
    def automatic_masks(
        self,
        embedding: torch.Tensor,
        image_size: int,
        *,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        min_mask_region_area: int = 0,
    ) -> list[dict[str, Any]]:
        """Segment everything: segment-anything's ``SamAutomaticMaskGenerator`` on one embedding.

        ``embedding`` [h, w, C] of a square ``image_size`` view. Thresholds are the generator's
        own (defaults tuned by Meta for ViT-H). Returns its mask records: ``segmentation`` (bool
        [S, S] numpy), ``area``, ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``,
        ``stability_score``, ``crop_box``. Multi-crop mode is not offered: each crop would need its
        own encoder pass, which a precomputed embedding cannot give.
        """
        features = self._embedding_nchw(embedding, batched=False)
        if min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401
            except ImportError as exc:
                raise ImportError(
                    "min_mask_region_area > 0 needs OpenCV (segment-anything's hole filling); "
                    "pip install opencv-python-headless, or pass min_mask_region_area=0"
                ) from exc
        generator = SamAutomaticMaskGenerator(
            self.model,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            min_mask_region_area=min_mask_region_area,
            output_mode="binary_mask",
        )
        predictor = _EmbeddingPredictor(self.model)
        predictor.embedding = features
        generator.predictor = predictor
        # With the encoder bypassed, the generator reads only the image's size (for the one crop).
        records: list[dict[str, Any]] = generator.generate(
            np.zeros((image_size, image_size, 3), dtype=np.uint8)
        )
        return records


# ---------------------------------------------------------------------------------------------
# sam_hf: transformers SamModel
# ---------------------------------------------------------------------------------------------


class SamHfTeacher(Teacher):
    """transformers ``SamModel``: the vision encoder's image embeddings as features."""

    def __init__(self, model: Any, mean: Triple, std: Triple) -> None:
        vision = model.config.vision_config
        size = square_size(vision.image_size, "sam_hf image_size")
        grid = size // square_size(vision.patch_size, "sam_hf patch_size")
        spec = TeacherSpec(
            name="sam_hf",
            input_size=size,
            mean=mean,
            std=std,
            grid=(grid, grid),
            channels=int(vision.output_channels),
            cls_channels=None,
        )
        super().__init__(spec)
        self.model = model

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        embedding = self.model.get_image_embeddings(pixel_values)  # [B, C, h, w]
        return TeacherOutput(patch=embedding.permute(0, 2, 3, 1).contiguous(), cls=None)


def tiny_sam_hf_config() -> Any:
    """A SamConfig with the same miniature sizes as the ``tiny`` segment-anything type."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    arch = SAM_ARCHS["tiny"]
    vision = SamVisionConfig(
        hidden_size=arch.encoder_embed_dim,
        output_channels=arch.prompt_embed_dim,
        num_hidden_layers=arch.encoder_depth,
        num_attention_heads=arch.encoder_num_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        window_size=arch.window_size,
        global_attn_indexes=list(arch.encoder_global_attn_indexes),
        num_pos_feats=arch.prompt_embed_dim // 2,
        initializer_range=0.02,  # the default 1e-10 makes a random miniature output ~0 everywhere
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=arch.prompt_embed_dim,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        mask_input_channels=arch.mask_in_chans,
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=arch.prompt_embed_dim,
        mlp_dim=arch.decoder_mlp_dim,
        num_hidden_layers=arch.decoder_depth,
        num_attention_heads=arch.decoder_num_heads,
        iou_head_hidden_dim=arch.iou_head_hidden_dim,
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def build_tiny_sam_hf() -> SamHfTeacher:
    from transformers import SamModel

    with seeded(TINY_SEED):
        model = SamModel(tiny_sam_hf_config()).eval()
    return SamHfTeacher(model, SAM_MEAN_UNIT, SAM_STD_UNIT)


def load_sam_hf(weights: str) -> SamHfTeacher:
    """A hub id or local ``save_pretrained`` directory of a transformers SamModel, loaded strictly."""
    from transformers import SamModel

    model = load_pretrained("sam_hf", weights, {"sam": SamModel})
    mean, std = normalization(read_preprocessor(weights), SAM_MEAN_UNIT, SAM_STD_UNIT)
    return SamHfTeacher(model, mean, std)


register_teacher(
    TeacherEntry(
        name="sam",
        default_weights="vit_h:sam_vit_h_4b8939.pth",
        build_tiny=build_tiny_sam,
        load_weights=load_sam_checkpoint,
        decoder="masks",
    )
)
register_teacher(
    TeacherEntry(
        name="sam_hf",
        default_weights="facebook/sam-vit-huge",
        build_tiny=build_tiny_sam_hf,
        load_weights=load_sam_hf,
        decoder=None,
    )
)

__all__ = [
    "SAM_ARCHS",
    "SamArch",
    "SamHfTeacher",
    "SamTeacher",
    "build_sam_model",
    "build_tiny_sam",
    "build_tiny_sam_hf",
    "load_sam_checkpoint",
    "load_sam_hf",
]
