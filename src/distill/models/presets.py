"""Student presets, architecture as data: the one table that ``StudentConfig`` and ``configs/model`` read.

A preset fixes the backbone's shape (width, depth, heads, MLP width) and the defaults of the
other architecture fields that depend on the size (patch size, the width of z, the token decoder's
depth). ``StudentConfig.from_preset(name, ...)`` starts from a row; the Hydra group ``model=<name>``
names the row through ``size`` and leaves those fields null unless overridden, so both ways give
the same config (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BackboneSize:
    """Width, depth, heads and MLP width of one ViT."""

    width: int
    depth: int
    heads: int
    mlp_dim: int


@dataclass(frozen=True)
class StudentPreset:
    """One row of :data:`PRESETS`: the backbone and the size-dependent StudentConfig defaults."""

    backbone: BackboneSize
    patch_size: int
    d_z: int  # width of the compact representation z
    decoder_depth: int  # token decoder blocks (bottleneck="cls")

    def fields(self) -> dict[str, Any]:
        """The StudentConfig fields this preset sets (besides ``size``, its name)."""
        return {"patch_size": self.patch_size, "d_z": self.d_z, "decoder_depth": self.decoder_depth}


PRESET_FIELDS = ("patch_size", "d_z", "decoder_depth")

# DeiT shapes (Touvron et al. 2021; same as facebook/deit-*-patch16-224) and a miniature for tests.
PRESETS: dict[str, StudentPreset] = {
    "tiny": StudentPreset(
        BackboneSize(width=48, depth=2, heads=3, mlp_dim=96), patch_size=8, d_z=32, decoder_depth=1
    ),
    "deit_tiny": StudentPreset(
        BackboneSize(width=192, depth=12, heads=3, mlp_dim=768), patch_size=16, d_z=192, decoder_depth=2
    ),
    "deit_small": StudentPreset(
        BackboneSize(width=384, depth=12, heads=6, mlp_dim=1536), patch_size=16, d_z=384, decoder_depth=2
    ),
    "deit_base": StudentPreset(
        BackboneSize(width=768, depth=12, heads=12, mlp_dim=3072), patch_size=16, d_z=768, decoder_depth=2
    ),
}


def get_preset(name: str) -> StudentPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown student size {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
