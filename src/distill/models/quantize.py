"""Discrete z: finite scalar quantisation (FSQ) or a learned codebook (VQ) on the student's z.

z's summary (its first ``d_z - 2 * z_keypoints`` dimensions) is cut into ``groups`` of ``code_dim``
consecutive dimensions and each group becomes one integer of a vocabulary of ``vocabulary`` values.
Keypoint coordinates (z's last ``2 * z_keypoints`` dimensions, models/keypoints.py) are positions the
decoder draws back, so FSQ's tanh or a codebook would distort them; each is instead the cell of a
uniform grid of ``keypoint_levels`` levels over the image, one code per coordinate. A frame is therefore
codes of two vocabularies, described by a :class:`~distill.codes.CodeLayout`, and worth
``sum(log2(vocabulary_i))`` bits. The quantised z the decoder reads is a function of the codes alone
(:meth:`Quantizer.decode`): its forward value is exactly ``decode(codes)``, bit for bit, and its
gradient passes straight through to the continuous z (``q + (x - x.detach())`` is ``q`` exactly in
the forward pass, where the textbook ``x + (q - x).detach()`` is only ``q`` up to rounding).

Both sit after z batch norm (``z_norm="batch"``), which gives every dimension zero mean and unit
variance over the batch: FSQ's tanh then spreads a dimension over all its levels from the first
step, and VQ's codebook starts in the right place (docs/decisions.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distill.codes import CodeLayout
from distill.distributed import global_sum, group_size
from distill.models.config import StudentConfig
from distill.models.keypoints import coordinate_level, level_value

VQ_DECAY = 0.95  # EMA of the codebook statistics: ~20 steps, so short runs track a moving encoder
# A code whose EMA share of the assignments falls below this fraction of the uniform share 1/K
# is restarted on a random z of the current batch (Jukebox / SoundStream dead-code restarts).
VQ_DEAD_SHARE = 1.0 / 16


@dataclass
class Quantized:
    z: torch.Tensor  # float32 [B, d_z]: forward value exactly decode(codes), gradient straight-through
    codes: torch.Tensor  # int64 [B, codes]: the summary's groups, then one per keypoint coordinate
    commit: torch.Tensor | None  # VQ commitment loss ||x - sg(q)||^2 of the summary (scalar); None for FSQ


def _layout(groups: int, vocabulary: int, code_dim: int, coordinates: int, levels: int) -> CodeLayout:
    """The summary's ``groups`` codes, then one code of ``levels`` values per keypoint coordinate."""
    return CodeLayout(
        (vocabulary,) * groups + (levels,) * coordinates, (code_dim,) * groups + (1,) * coordinates
    )


class Quantizer(nn.Module, ABC):
    """z -> :class:`Quantized` and codes -> quantised z, for both quantisers.

    The subclass quantises the summary (:meth:`_summary`, :meth:`_decode_summary`); the keypoint
    coordinates go through the one grid here. ``groups`` and ``vocabulary`` are the summary's (what
    codebook use is measured over); ``layout`` describes every code of a frame.
    """

    def __init__(
        self, d_z: int, code_dim: int, vocabulary: int, keypoints: int = 0, keypoint_levels: int = 64
    ) -> None:
        super().__init__()
        summary = d_z - 2 * keypoints
        if summary <= 0 or summary % code_dim:
            raise ValueError(
                f"z's summary ({d_z} - 2 * {keypoints} keypoints = {summary} dimensions) is not a positive "
                f"multiple of the code width {code_dim}"
            )
        self.d_z, self.summary_dims, self.code_dim = d_z, summary, code_dim
        self.groups, self.vocabulary, self.keypoint_levels = summary // code_dim, vocabulary, keypoint_levels
        self.layout = _layout(self.groups, vocabulary, code_dim, 2 * keypoints, keypoint_levels)

    @property
    def bits_per_frame(self) -> float:
        return self.layout.bits_per_frame

    def forward(self, z: torch.Tensor) -> Quantized:
        summary, codes, commit = self._summary(z[:, : self.summary_dims])
        if self.summary_dims == self.d_z:
            return Quantized(summary, codes, commit)
        x = z[:, self.summary_dims :].float()
        levels = coordinate_level(x, self.keypoint_levels)
        points = level_value(levels, self.keypoint_levels) + (x - x.detach())
        return Quantized(torch.cat([summary, points], 1), torch.cat([codes, levels], 1), commit)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes [B, codes] -> the quantised z [B, d_z] (float32)."""
        if codes.ndim != 2 or codes.shape[1] != self.layout.codes or codes.is_floating_point():
            raise ValueError(f"codes must be integers [B, {self.layout.codes}], got {tuple(codes.shape)}")
        self.layout.check(codes)
        codes = codes.to(self._device())
        summary = self._decode_summary(codes[:, : self.groups])
        return torch.cat([summary, level_value(codes[:, self.groups :], self.keypoint_levels)], 1)

    @abstractmethod
    def _summary(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The summary [B, summary_dims] -> (quantised values, straight-through; codes [B, groups]; commit)."""

    @abstractmethod
    def _decode_summary(self, codes: torch.Tensor) -> torch.Tensor:
        """The summary's codes [B, groups] (already checked) -> its quantised values [B, summary_dims]."""

    def table(self) -> torch.Tensor:
        """Every code's z values: [codes, vocabulary, width] in the layout's shape, zero where a code has no
        such value or dimension (``CodeLayout.lookup`` reads it; what a world model over codes rolls out with)."""
        layout, device = self.layout, self._device()
        table = torch.zeros(layout.codes, layout.vocabulary, layout.width, device=device)
        every = torch.arange(self.vocabulary, device=device).expand(self.groups, -1).T
        summary = self._decode_summary(every).reshape(self.vocabulary, self.groups, self.code_dim)
        table[: self.groups, : self.vocabulary, : self.code_dim] = summary.transpose(0, 1)
        if self.summary_dims < self.d_z:
            levels = torch.arange(self.keypoint_levels, device=device)
            table[self.groups :, : self.keypoint_levels, 0] = level_value(levels, self.keypoint_levels)
        return table

    def _device(self) -> torch.device:
        return next(iter(self.buffers())).device


class FiniteScalarQuantizer(Quantizer):
    """FSQ (Mentzer et al. 2023): each dimension squashed by tanh into [-1, 1] and rounded to L levels.

    No parameters and no codebook to collapse; a code is the mixed-radix number of its group's levels.
    """

    levels: torch.Tensor
    radix: torch.Tensor

    def __init__(
        self, d_z: int, levels: tuple[int, ...], keypoints: int = 0, keypoint_levels: int = 64
    ) -> None:
        super().__init__(d_z, len(levels), math.prod(levels), keypoints, keypoint_levels)
        radix = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        self.register_buffer("radix", torch.tensor(radix, dtype=torch.int64), persistent=False)

    def _values(self, index: torch.Tensor) -> torch.Tensor:
        """Level indices 0..L-1 -> values in [-1, 1] (one formula for encode and decode: equal bits)."""
        return index * 2 / (self.levels - 1) - 1

    def _summary(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = torch.tanh(z.float()).reshape(z.shape[0], self.groups, self.code_dim)
        index = torch.round((x.detach() + 1) * (self.levels - 1) / 2)
        quantised = self._values(index) + (x - x.detach())
        codes = (index.long() * self.radix).sum(-1)
        return quantised.reshape(z.shape[0], self.summary_dims), codes, None

    def _decode_summary(self, codes: torch.Tensor) -> torch.Tensor:
        digits = (codes[..., None] // self.radix) % self.levels.long()
        return self._values(digits.float()).reshape(codes.shape[0], self.summary_dims)


class VectorQuantizer(Quantizer):
    """VQ with one codebook of ``vocabulary`` vectors per group, learned by EMA, with dead-code restarts.

    The codebook is a buffer updated in training-mode forwards from the batch's assignments
    (counts and sums summed over ranks, so every rank keeps the same codebook); only the
    commitment loss trains the encoder towards it. Counts and sums both start at zero, so their
    ratio is the plain mean of the assigned vectors from the first update on (no start-up bias).
    Codes whose usage decays below ``VQ_DEAD_SHARE / vocabulary`` (every code at the first step)
    are moved onto random z's of the batch (rank 0's, broadcast).
    """

    codebook: torch.Tensor
    counts: torch.Tensor
    sums: torch.Tensor

    def __init__(
        self, d_z: int, code_dim: int, vocabulary: int, keypoints: int = 0, keypoint_levels: int = 64
    ) -> None:
        super().__init__(d_z, code_dim, vocabulary, keypoints, keypoint_levels)
        self.register_buffer("codebook", torch.randn(self.groups, vocabulary, code_dim))
        self.register_buffer("counts", torch.zeros(self.groups, vocabulary))  # EMA assignments per step
        self.register_buffer("sums", torch.zeros(self.groups, vocabulary, code_dim))  # EMA assigned sums

    def _summary(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = z.float().reshape(z.shape[0], self.groups, self.code_dim)
        distances = torch.cdist(x.detach().transpose(0, 1), self.codebook)  # [groups, B, vocabulary]
        codes = distances.argmin(-1).T  # [B, groups]
        quantised = self._lookup(codes)
        commit = F.mse_loss(x, quantised)
        if self.training and torch.is_grad_enabled():
            self._update(x.detach(), codes)
        return (quantised + (x - x.detach())).reshape(z.shape[0], self.summary_dims), codes, commit

    def _lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, groups] -> codebook vectors [B, groups, code_dim] (a copy)."""
        return self.codebook[torch.arange(self.groups, device=codes.device), codes]

    def _decode_summary(self, codes: torch.Tensor) -> torch.Tensor:
        return self._lookup(codes).reshape(codes.shape[0], self.summary_dims)

    @torch.no_grad()
    def _update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.vocabulary).float()  # [B, codes, vocabulary]
        counts = global_sum(onehot.sum(0))
        # fp32 like the buffers it updates: under the trainer's bf16 autocast (GPU) einsum would round
        with torch.autocast(x.device.type, enabled=False):
            sums = global_sum(torch.einsum("bgk,bgd->gkd", onehot, x.float()))
        self.counts.lerp_(counts, 1 - VQ_DECAY)
        self.sums.lerp_(sums, 1 - VQ_DECAY)
        used = self.counts > 0
        means = self.sums / self.counts.clamp_min(1e-12)[..., None]
        self.codebook.copy_(torch.where(used[..., None], means, self.codebook))
        per_step = counts.sum(-1, keepdim=True)  # assignments per group this step, all ranks
        dead = self.counts < VQ_DEAD_SHARE * per_step / self.vocabulary
        if bool(dead.any()):
            self._restart(dead, x, per_step / self.vocabulary)

    def _restart(self, dead: torch.Tensor, x: torch.Tensor, uniform: torch.Tensor) -> None:
        """Dead codes -> random rows of the batch, with the usage of a uniformly used code."""
        picks = torch.randint(0, x.shape[0], (int(dead.sum()),), device=x.device)
        group = dead.nonzero()[:, 0]
        fresh = x[picks, group]
        if group_size() > 1:
            dist.broadcast(fresh, src=0)
        counts = uniform.expand_as(self.counts)[dead]
        self.codebook[dead] = fresh
        self.counts[dead] = counts
        self.sums[dead] = fresh * counts[:, None]


def build_quantizer(config: StudentConfig) -> Quantizer | None:
    """The quantiser ``config.quantizer`` names (None for ``"none"``), keypoint coordinates on their grid."""
    keypoints, levels = config.z_keypoints, config.keypoint_levels
    if config.quantizer == "fsq":
        return FiniteScalarQuantizer(config.d_z, config.fsq_levels, keypoints, levels)
    if config.quantizer == "vq":
        return VectorQuantizer(config.d_z, config.vq_code_dim, config.vq_codebook_size, keypoints, levels)
    return None


def summary_layout(config: StudentConfig) -> tuple[int, int] | None:
    """(codes, vocabulary) of the config's summary quantiser, the codes whose use is logged (the first
    ``codes`` of a frame; the keypoint grid's cells are positions, not a codebook); None without one."""
    if config.quantizer == "fsq":
        width, vocabulary = len(config.fsq_levels), math.prod(config.fsq_levels)
    elif config.quantizer == "vq":
        width, vocabulary = config.vq_code_dim, config.vq_codebook_size
    else:
        return None
    return (config.d_z - 2 * config.z_keypoints) // width, vocabulary


def code_layout(config: StudentConfig) -> CodeLayout | None:
    """Every code of a frame of the config's quantiser (what ``Quantizer.layout`` is); None without one."""
    summary = summary_layout(config)
    if summary is None:
        return None
    groups, vocabulary = summary
    width = (config.d_z - 2 * config.z_keypoints) // groups
    return _layout(groups, vocabulary, width, 2 * config.z_keypoints, config.keypoint_levels)


def code_histogram(codes: torch.Tensor, vocabulary: int) -> torch.Tensor:
    """int codes [B, codes] in [0, vocabulary) -> float64 counts [codes, vocabulary] (summed over
    batches and ranks). One bincount over group-offset codes: no [B, codes, vocabulary] one-hot."""
    groups = codes.shape[1]
    offset = codes.long() + torch.arange(groups, device=codes.device) * vocabulary
    counts = torch.bincount(offset.reshape(-1), minlength=groups * vocabulary)
    return counts.reshape(groups, vocabulary).to(torch.float64)


def usage_metrics(histogram: torch.Tensor) -> dict[str, float]:
    """Codebook use from counts [codes, vocabulary]: the mean per-group perplexity (exp of the code
    entropy; ``vocabulary`` when every code is equally used) and the fraction of codes never used."""
    totals = histogram.sum(-1, keepdim=True)
    if not bool((totals > 0).all()):
        raise ValueError("code usage needs at least one frame")
    p = histogram / totals
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    return {
        "codes/perplexity": float(entropy.exp().mean()),
        "codes/dead": float((histogram == 0).double().mean()),
    }
