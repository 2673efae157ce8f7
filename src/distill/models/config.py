"""The student's configuration: architecture as data, JSON round-trippable, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from distill.features import TeacherSpec
from distill.models.presets import PRESET_FIELDS, BackboneSize, get_preset

Bottleneck = Literal["cls", "none"]
HeadKind = Literal["mlp", "conv"]
ZNorm = Literal["batch", "none"]
QuantizerKind = Literal["none", "fsq", "vq"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """Everything needed to rebuild a student; saved as ``config.json`` in its checkpoint folder.

    ``teachers`` maps each predicted teacher's name to the spec of the teacher it was trained
    against, so a checkpoint alone tells which grids and channels its heads produce. ``size`` names
    a row of :data:`distill.models.presets.PRESETS` (the backbone); the fields that row gives
    defaults for (``patch_size``, ``d_z``, ``decoder_depth``) have none here, so a config is either
    spelt out in full or built with :meth:`from_preset` and cannot silently disagree with the table.
    """

    teachers: dict[str, TeacherSpec]
    size: str
    image_size: int = 224  # square training resolution; other multiples of patch_size work at inference
    patch_size: int
    bottleneck: Bottleneck = "cls"
    d_z: int  # width of the compact representation z
    z_norm: ZNorm = "batch"  # z standardised over the batch (models/znorm.py) | none
    # Spatial-softmax keypoints (models/keypoints.py): the last 2 * z_keypoints dimensions of z are
    # (x, y) image positions pooled from the patch tokens, which the token decoder draws back as heatmaps.
    z_keypoints: int = 0
    # Each keypoint also drawn onto the pixels as a small sprite (models/keypoints.py KeypointSprites).
    keypoint_sprites: bool = False
    # z as integer codes (models/quantize.py), after z_norm: none | fsq | vq. Each code covers
    # len(fsq_levels) (fsq) or vq_code_dim (vq) consecutive dimensions of z's summary (the d_z - 2 * z_keypoints
    # dimensions before the keypoints), which must be a multiple of it.
    quantizer: QuantizerKind = "none"
    fsq_levels: tuple[int, ...] = (
        8,
        5,
        5,
        5,
    )  # fsq: levels of each dimension of a code (vocabulary: their product)
    vq_codebook_size: int = 512  # vq: vectors in each code's codebook (the vocabulary)
    vq_code_dim: int = 8  # vq: dimensions of z per code
    # With a quantiser, each keypoint coordinate is one code: the cell of a uniform grid of this many levels
    # over the image (64: one level per pixel at 64 px).
    keypoint_levels: int = 64
    # Token decoder (bottleneck="cls" only; "none" has no decoder and refuses decoder_dim/decoder_heads,
    # while decoder_depth keeps whatever the model preset says and is not read).
    decoder_dim: int | None = None  # token decoder width; None = backbone width
    decoder_depth: int
    decoder_heads: int | None = None  # None = backbone heads
    head: HeadKind = "mlp"
    head_hidden_dim: int | None = None  # hidden width of the per-teacher heads; None = their input width
    pixel_head: bool = True
    pretrained: str | None = None  # hub id or local directory of a ViT/DeiT to initialise the backbone from
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        get_preset(self.size)
        if self.bottleneck not in get_args(Bottleneck):
            raise ValueError(f"bottleneck must be one of {get_args(Bottleneck)}, got {self.bottleneck!r}")
        if self.z_norm not in get_args(ZNorm):
            raise ValueError(f"z_norm must be one of {get_args(ZNorm)}, got {self.z_norm!r}")
        if self.head not in get_args(HeadKind):
            raise ValueError(f"head must be one of {get_args(HeadKind)}, got {self.head!r}")
        if self.patch_size <= 0 or self.image_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a positive multiple of patch_size {self.patch_size}"
            )
        sizes = {
            "d_z": self.d_z,
            "decoder_depth": self.decoder_depth,
            "decoder_dim": self.decoder_dim,
            "decoder_heads": self.decoder_heads,
            "head_hidden_dim": self.head_hidden_dim,
        }
        for name, value in sizes.items():
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= 2 * self.z_keypoints < self.d_z:
            raise ValueError(
                f"z_keypoints={self.z_keypoints} takes {2 * self.z_keypoints} of z's d_z={self.d_z} dimensions; "
                "it must be >= 0 and leave at least one dimension for the CLS summary"
            )
        if self.keypoint_sprites and not (self.z_keypoints and self.pixel_head):
            raise ValueError(
                f"keypoint_sprites draws the keypoints onto the pixel head's output, but z_keypoints={self.z_keypoints} "
                f"and pixel_head={self.pixel_head}; set z_keypoints > 0 and pixel_head=true, or keypoint_sprites=false"
            )
        self._check_quantizer()  # after z_keypoints: the quantiser splits z at the keypoints
        if self.bottleneck == "none":
            given = [
                f"{name}={value}"
                for name, value in (("decoder_dim", self.decoder_dim), ("decoder_heads", self.decoder_heads))
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} sets the token decoder, which bottleneck='none' does not have "
                    "(its heads read the backbone's patch tokens at the backbone width); "
                    "drop them (null) or use bottleneck='cls'"
                )
        if self.decoder_dim_resolved % self.decoder_heads_resolved:
            raise ValueError(
                f"decoder_dim {self.decoder_dim_resolved} is not divisible by decoder_heads {self.decoder_heads_resolved}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got mean={self.mean} std={self.std}")
        for name, spec in self.teachers.items():
            if not isinstance(spec, TeacherSpec):
                raise TypeError(f"teachers[{name!r}] must be a TeacherSpec, got {type(spec).__name__}")
            if spec.name != name:
                raise ValueError(
                    f"teachers[{name!r}] holds the spec of teacher {spec.name!r}; keys must match spec names"
                )
        if not self.teachers and not self.pixel_head:
            raise ValueError(
                "the student predicts nothing: give it at least one teacher or enable pixel_head"
            )

    def _check_quantizer(self) -> None:
        object.__setattr__(self, "fsq_levels", tuple(int(level) for level in self.fsq_levels))
        if self.quantizer not in get_args(QuantizerKind):
            raise ValueError(f"quantizer must be one of {get_args(QuantizerKind)}, got {self.quantizer!r}")
        if self.quantizer == "fsq":
            if not self.fsq_levels or min(self.fsq_levels) < 2:
                raise ValueError(f"fsq_levels must be one or more levels >= 2, got {list(self.fsq_levels)}")
            width, what = len(self.fsq_levels), f"len(fsq_levels)={len(self.fsq_levels)}"
        elif self.quantizer == "vq":
            if self.vq_codebook_size < 2 or self.vq_code_dim < 1:
                raise ValueError(
                    f"vq_codebook_size must be >= 2 and vq_code_dim >= 1, got {self.vq_codebook_size}, {self.vq_code_dim}"
                )
            width, what = self.vq_code_dim, f"vq_code_dim={self.vq_code_dim}"
        else:
            return
        if self.keypoint_levels < 2:
            raise ValueError(f"keypoint_levels must be >= 2, got {self.keypoint_levels}")
        summary = self.d_z - 2 * self.z_keypoints
        if summary % width:
            raise ValueError(
                f"quantizer={self.quantizer}: z's summary (d_z={self.d_z} less 2 * z_keypoints={self.z_keypoints}, "
                f"{summary} dimensions) is not a multiple of {what} (the dimensions per code); "
                "change d_z or the code width"
            )

    @classmethod
    def from_preset(cls, size: str, teachers: dict[str, TeacherSpec], **overrides: Any) -> StudentConfig:
        """The preset's fields, then ``overrides`` (any other field; a None preset field keeps the preset's)."""
        values = get_preset(size).fields()
        values |= {k: v for k, v in overrides.items() if not (k in PRESET_FIELDS and v is None)}
        return cls(teachers=teachers, size=size, **values)

    @property
    def backbone(self) -> BackboneSize:
        return get_preset(self.size).backbone

    @property
    def grid(self) -> tuple[int, int]:
        """The student's patch grid at its training resolution."""
        side = self.image_size // self.patch_size
        return (side, side)

    @property
    def decoder_dim_resolved(self) -> int:
        return self.decoder_dim if self.decoder_dim is not None else self.backbone.width

    @property
    def decoder_heads_resolved(self) -> int:
        return self.decoder_heads if self.decoder_heads is not None else self.backbone.heads

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; ``from_dict(to_dict())`` gives an equal config."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["teachers"] = {name: spec.to_dict() for name, spec in self.teachers.items()}
        return _jsonable(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown student config keys {unknown}; known keys: {sorted(known)}")
        if "teachers" not in data:
            raise ValueError(
                "student config lacks 'teachers' (a mapping of teacher name -> TeacherSpec fields)"
            )
        kwargs = dict(data)
        kwargs["teachers"] = {name: TeacherSpec.from_dict(spec) for name, spec in data["teachers"].items()}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively, so the dict equals what ``json.loads(json.dumps(...))`` gives."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
