"""The world model's own small typed config, stored with its weights (``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from distill.codes import CodeLayout

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
    # target="codes": each code's vocabulary and z width, in code order (the latent dataset's CodeLayout)
    vocabularies: tuple[int, ...] = ()
    widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabularies", tuple(int(v) for v in self.vocabularies))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.target not in get_args(Target):
            raise ValueError(f"target must be one of {get_args(Target)}, got {self.target!r}")
        if (self.target == "codes") != bool(self.vocabularies):
            raise ValueError(
                f"target={self.target!r} with vocabularies={list(self.vocabularies)}: codes need a code layout, z none"
            )
        layout = self.layout
        if layout is not None and layout.d_z != self.d_z:
            raise ValueError(f"the codes' widths {list(self.widths)} sum to {layout.d_z}, not d_z {self.d_z}")
        if (
            min(self.d_z, self.history, self.frame_skip, self.width, self.depth, self.heads, self.mlp_ratio)
            < 1
        ):
            raise ValueError(f"every size of {self} must be >= 1")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if (self.action is None) != (self.action_dim == 0):
            raise ValueError(f"action {self.action!r} and action_dim {self.action_dim}: both set or neither")

    @property
    def layout(self) -> CodeLayout | None:
        """The codes' layout (target="codes"); None for target="z"."""
        return CodeLayout(self.vocabularies, self.widths) if self.vocabularies else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldModelConfig:
        data = dict(data)
        codes, vocabulary = int(data.pop("codes", 0)), int(data.pop("vocabulary", 0))
        if codes:  # written before per-code vocabularies: one vocabulary, z cut evenly
            layout = CodeLayout.uniform(codes, vocabulary, int(data["d_z"]) // codes)
            data |= {"vocabularies": layout.vocabularies, "widths": layout.widths}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown world-model config keys {sorted(unknown)}")
        return cls(**data)
