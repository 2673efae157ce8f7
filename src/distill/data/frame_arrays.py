"""The per-frame numeric arrays a frames dataset carries in each frame's metadata (``meta["arrays"]``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def stack_frame_arrays(
    metas: Sequence[Mapping[str, Any]], keys: Sequence[str], where: str
) -> dict[str, torch.Tensor]:
    """Each frame's ``meta["arrays"]`` stacked to float64 [N, K] per name.

    Every frame must carry the same names with the same lengths: a frame without a row would shift
    every later row onto the wrong frame, so a difference is an error naming the frame.
    """
    if not metas:
        return {}
    names = sorted(metas[0].get("arrays", {}))
    rows: dict[str, list[list[float]]] = {name: [] for name in names}
    for meta, key in zip(metas, keys, strict=True):
        carried = meta.get("arrays", {})
        if sorted(carried) != names:
            raise ValueError(
                f"{where}: frame {key!r} carries arrays {sorted(carried)}, the first frame {names}"
            )
        for name in names:
            rows[name].append([float(x) for x in carried[name]])
    out = {}
    for name, values in rows.items():
        if len({len(v) for v in values}) != 1:
            raise ValueError(f"{where}: array {name!r} changes length between frames")
        out[name] = torch.tensor(values, dtype=torch.float64)
    return out
