"""The world model's own small typed config, stored with its weights (``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

Target = Literal["z", "codes"]


@dataclass(frozen=True)
class WorldModelConfig:
    d_z: int  # the student's z size
    action_dim: int  # K of the action array times frame_skip (0: no actions)
    action: str | None = "action"  # the latent dataset's per-frame array used as the action
    history: int = 4  # past z's the model sees
    frame_skip: int = 1  # predict the z this many frames ahead
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    target: Target = "z"  # z: regress the next z | codes: classify the next frame's codes (cross-entropy)
    codes: int = 0  # codes per frame and their vocabulary (target="codes"; from the latent dataset)
    vocabulary: int = 0

    def __post_init__(self) -> None:
        if self.target not in get_args(Target):
            raise ValueError(f"target must be one of {get_args(Target)}, got {self.target!r}")
        if (self.target == "codes") != (self.codes > 0 and self.vocabulary > 1):
            raise ValueError(
                f"target={self.target!r} with codes={self.codes}, vocabulary={self.vocabulary}: codes need both, z neither"
            )
        if self.codes and self.d_z % self.codes:
            raise ValueError(f"d_z {self.d_z} is not a multiple of codes {self.codes}")
        if (
            min(self.d_z, self.history, self.frame_skip, self.width, self.depth, self.heads, self.mlp_ratio)
            < 1
        ):
            raise ValueError(f"every size of {self} must be >= 1")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if (self.action is None) != (self.action_dim == 0):
            raise ValueError(f"action {self.action!r} and action_dim {self.action_dim}: both set or neither")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldModelConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown world-model config keys {sorted(unknown)}")
        return cls(**data)
