"""The world model's own small typed config, stored with its weights (``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


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

    def __post_init__(self) -> None:
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
