"""The layout of a frame's integer codes: each code's vocabulary and how many z dimensions it stands for.

A quantised student's codes need not share one vocabulary: the summary quantiser's codes (FSQ/VQ,
several dimensions each) come first, then one code per keypoint coordinate on its own grid
(docs/decisions.md, "Discrete z"). The quantiser, the latent format and the world model all read the
layout from here, so "which values may code i take, and which dimensions of z does it fill" has one
answer. Lives in the lowest layer because all three use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CodeLayout:
    """Code i takes values in ``[0, vocabularies[i])`` and stands for ``widths[i]`` consecutive dimensions of z."""

    vocabularies: tuple[int, ...]
    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabularies", tuple(int(v) for v in self.vocabularies))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.vocabularies or len(self.vocabularies) != len(self.widths):
            raise ValueError(
                f"a code layout needs one vocabulary and one width per code, got {self.vocabularies} / {self.widths}"
            )
        if min(self.vocabularies) < 1 or min(self.widths) < 1:
            raise ValueError(f"vocabularies and widths must be >= 1, got {self.vocabularies} / {self.widths}")

    @classmethod
    def uniform(cls, codes: int, vocabulary: int, width: int) -> CodeLayout:
        """``codes`` codes of one vocabulary and width (a quantiser without keypoints)."""
        return cls((vocabulary,) * codes, (width,) * codes)

    @property
    def codes(self) -> int:
        return len(self.vocabularies)

    @property
    def vocabulary(self) -> int:
        """The largest vocabulary: the width of a table or of a logits row that holds every code."""
        return max(self.vocabularies)

    @property
    def width(self) -> int:
        """The widest code: the last dimension of a code table."""
        return max(self.widths)

    @property
    def d_z(self) -> int:
        return sum(self.widths)

    @property
    def bits_per_frame(self) -> float:
        return sum(math.log2(v) for v in self.vocabularies)

    def valid(self, device: torch.device | None = None) -> torch.Tensor:
        """bool [codes, vocabulary]: which values each code can take (False: impossible for that code)."""
        return _prefixes(self.vocabularies, device)

    def dims(self, device: torch.device | None = None) -> torch.Tensor:
        """bool [codes, width]: which columns of a code table's rows are z dimensions (the rest is padding)."""
        return _prefixes(self.widths, device)

    def check(self, codes: torch.Tensor) -> None:
        """Refuse anything but integers [..., codes] with every code inside its own vocabulary."""
        if codes.ndim < 1 or codes.shape[-1] != self.codes or codes.is_floating_point():
            raise ValueError(
                f"codes must be integers [..., {self.codes}], got {codes.dtype} {tuple(codes.shape)}"
            )
        limits = torch.tensor(self.vocabularies, device=codes.device)
        bad = (codes < 0) | (codes >= limits)
        if bool(bad.any()):
            index = int(bad.reshape(-1, self.codes).any(0).nonzero()[0])
            raise ValueError(
                f"code {index} must lie in [0, {self.vocabularies[index]}) (vocabularies {list(self.vocabularies)}), "
                f"got values in [{int(codes[..., index].min())}, {int(codes[..., index].max())}]"
            )

    def check_table(self, table: torch.Tensor) -> None:
        """A code table [codes, vocabulary, width] of this layout: right shape, zeros where nothing can be."""
        expected = (self.codes, self.vocabulary, self.width)
        if tuple(table.shape) != expected:
            raise ValueError(f"a code table of layout {self} is {expected}, got {tuple(table.shape)}")
        padding = ~(self.valid(table.device)[:, :, None] & self.dims(table.device)[:, None, :])
        if bool(table[padding].any()):
            raise ValueError("the code table holds values outside its codes' vocabularies or widths")

    def lookup(self, table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., codes] -> z [..., d_z] through a table [codes, vocabulary, width]: each code's row,
        its padding dropped, in code order. Copies values, so it equals the quantiser's decode bit for bit."""
        rows = table[torch.arange(self.codes, device=codes.device), codes]  # [..., codes, width]
        return rows[..., self.dims(codes.device)]

    def to_dict(self) -> dict[str, list[int]]:
        return {"vocabularies": list(self.vocabularies), "widths": list(self.widths)}


def _prefixes(lengths: tuple[int, ...], device: torch.device | None) -> torch.Tensor:
    """bool [len(lengths), max(lengths)]: row i is True on its first ``lengths[i]`` columns."""
    return torch.arange(max(lengths), device=device) < torch.tensor(lengths, device=device)[:, None]
