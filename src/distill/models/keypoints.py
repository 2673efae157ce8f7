"""Spatial-softmax keypoints: where things are in the image, as coordinates inside z.

A ridge probe, a policy or a world model reads positions off z far more easily when some of z's
dimensions *are* positions. ``KeypointPooling`` turns the backbone's patch tokens into ``count``
(x, y) points: a softmax over the patches says where each point looks, and every patch adds a
bounded sub-patch offset, so a point can sit anywhere, not only at patch centres. The token decoder
reads the points back from z and draws each as a Gaussian heatmap added to its queries, which gives
it a direct way to put an object where z says it is.

Coordinates are in [0, 1] of the image (x right, y down); inside z they are centred and scaled by
``sqrt(12)`` (unit variance for a uniform position), a fixed map so the decoder inverts it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.teachers.precision import tf32

POSITION_SCALE = math.sqrt(12.0)


@dataclass(frozen=True)
class SpriteSearch:
    """The sprites' search terms (:meth:`KeypointSprites.search`), scalars.

    ``change``: the pixel MSE change were the sprites drawn where their keypoints look, plus where they
    would help most, summed over the sprites (negative is good). ``assignment``: the cross-entropy of each
    keypoint's softmax against its sprite's best candidate, averaged over the sprites.
    """

    change: torch.Tensor
    assignment: torch.Tensor


def cell_centres(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """[h*w, 2] (x, y) centres of a patch grid's cells in [0, 1] image coordinates, raster order."""
    rows, cols = grid
    ys, xs = torch.meshgrid(
        (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) / rows,
        (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) / cols,
        indexing="ij",
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


class KeypointPooling(nn.Module):
    """Patch tokens [B, h*w, D] on ``grid`` -> ``count`` points [B, count, 2] in [0, 1]."""

    def __init__(self, width: int, count: int) -> None:
        super().__init__()
        self.count = count
        self.norm = nn.LayerNorm(width)
        self.logits = nn.Linear(width, count)
        self.offsets = nn.Linear(width, 2 * count)

    def candidates(self, patches: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each point looks: log-softmax weights [B, N, K] over the patches and each patch's candidate
        position [B, N, K, 2] (its centre plus its offset); a point is their weighted mean."""
        batch, tokens, _ = patches.shape
        if tokens != grid[0] * grid[1]:
            raise ValueError(f"{tokens} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
        x = self.norm(patches)
        log_weights = self.logits(x).log_softmax(dim=1)
        half_cell = 0.5 / torch.tensor([grid[1], grid[0]], dtype=x.dtype, device=x.device)
        offsets = torch.tanh(self.offsets(x)).reshape(batch, tokens, self.count, 2) * half_cell
        return log_weights, cell_centres(grid, x.device).to(x.dtype)[None, :, None] + offsets

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return pooled_points(*self.candidates(patches, grid))


def pooled_points(log_weights: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The points [B, K, 2]: each keypoint's candidate positions [B, N, K, 2] averaged under its softmax."""
    return (log_weights.exp()[..., None] * positions).sum(dim=1)


def points_to_z(points: torch.Tensor) -> torch.Tensor:
    """Points [B, K, 2] in [0, 1] -> z's keypoint dimensions [B, 2K] (centred, unit variance if uniform)."""
    return ((points - 0.5) * POSITION_SCALE).flatten(1)


def points_from_z(z_points: torch.Tensor) -> torch.Tensor:
    """z's keypoint dimensions [B, 2K] -> points [B, K, 2] in image coordinates (inverse of points_to_z)."""
    return (z_points / POSITION_SCALE + 0.5).unflatten(1, (-1, 2))


def coordinate_level(z_points: torch.Tensor, levels: int) -> torch.Tensor:
    """z's keypoint coordinates [B, 2K] -> int64 level indices [B, 2K] on a uniform grid of ``levels``
    cells over the image (level i is [i / levels, (i + 1) / levels)); positions outside the image clamp."""
    position = z_points.detach().float() / POSITION_SCALE + 0.5
    return torch.floor(position * levels).clamp(0, levels - 1).long()


def level_value(levels_index: torch.Tensor, levels: int) -> torch.Tensor:
    """Level indices -> z values (float32) of the cells' centres; one formula for quantising and decoding,
    so codes decode to the quantised z bit for bit. At ``levels`` = image side a centre is a pixel's."""
    return ((levels_index.float() + 0.5) / levels - 0.5) * POSITION_SCALE


def heatmaps(points: torch.Tensor, grid: tuple[int, int], sigma: tuple[float, float]) -> torch.Tensor:
    """Points [B, K, 2] -> Gaussian bumps [B, h*w, K] at ``grid``'s cell centres.

    ``sigma`` is (x, y) in image units; fixing it in image units (one cell of the training grid)
    keeps a point's footprint the same at every resolution the decoder is asked for.
    """
    centres = cell_centres(grid, points.device).to(points.dtype)  # [N, 2]
    scale = torch.tensor(sigma, dtype=points.dtype, device=points.device)
    distance = ((centres[None, :, None] - points[:, None]) / scale).square().sum(-1)  # [B, N, K]
    return torch.exp(-0.5 * distance)


class KeypointSprites(nn.Module):
    """Draws each keypoint onto the pixels as a small round sprite: a learned colour, size and opacity.

    The token decoder paints at the resolution of its patch grid, so an object smaller than a patch
    comes out as a smear around where it is. A sprite is drawn at the point's exact position in pixel
    space, so a small moving object (a robot's end effector, a ball) can be put back sharp.
    Sprites are composited in keypoint order over the decoded image: ``out = out * (1 - a) + colour * a``
    with ``a`` a Gaussian footprint of the point times the sprite's opacity.

    A sprite only changes the pixels near its point, so the pixel loss alone cannot pull a point
    across the image onto an object it should draw. :meth:`search` gives that pull: the change in
    pixel error were the sprite drawn at each patch's candidate position, so the softmax learns to
    look where a sprite would help most.
    """

    def __init__(self, count: int, radius: float = 0.025) -> None:
        super().__init__()
        self.colour = nn.Parameter(torch.full((count, 3), 0.5))
        self.opacity_logit = nn.Parameter(torch.zeros(count))
        self.log_radius = nn.Parameter(torch.full((count,), math.log(radius)))

    def forward(self, pixels: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] in [0, 1], points [B, K, 2] in [0, 1] image units -> pixels with the sprites."""
        for k in range(points.shape[1]):
            pixels = self._draw(pixels, points[:, k], k)
        return pixels

    def search(
        self, pixels: torch.Tensor, target: torch.Tensor, log_weights: torch.Tensor, candidates: torch.Tensor
    ) -> SpriteSearch:
        """Where each sprite would lower the pixel error most, and how far its keypoint looks from there.

        ``pixels`` [B, 3, H, W] are the pixel head's output before any sprite is drawn (treated as
        fixed); ``target`` the true image; ``log_weights`` [B, N, K] and ``candidates`` [B, N, K, 2]
        the keypoints' log-softmax and positions (:meth:`KeypointPooling.candidates`). Sprites are
        scored greedily in keypoint order: sprite k over the decode with sprites < k drawn, opaque as
        the search draws them, at their pooled points. Each one looks for what the decoder and the
        earlier sprites still miss (drawn at their learned opacity, an object half drawn by one sprite
        stays the best place for the next, and several stack on it), and a sprite that already draws
        an object keeps finding its best candidate there.

        Per sprite: the error change averaged under the softmax and the change at the single best
        candidate, drawn there (fitting the sprite's colour and size to what it could draw; fitted
        under the average instead, the colour drifts to the background, where most candidates are),
        add up to :attr:`SpriteSearch.change`; the cross-entropy of the softmax against that best
        candidate is :attr:`SpriteSearch.assignment`. The average alone pulls a softmax only where it
        already puts weight, so a keypoint that settled on a large object never finds a small one
        that a sprite would draw better; the cross-entropy pulls it there from anywhere.
        Computed in fp32 (the map is a difference of two blurs), outside any autocast and without TF32.
        """
        height, width = pixels.shape[-2:]
        # One kernel size for every blur of the call: 4 sigma of the widest sprite (one host sync).
        half = max(1, math.ceil(4 * float(self.log_radius.detach().exp().max()) * width))
        dtype = torch.promote_types(pixels.dtype, torch.float32)
        change = assignment = pixels.new_zeros((), dtype=dtype)
        with torch.autocast(pixels.device.type, enabled=False), tf32(False):
            pixels, target, log_weights, candidates = (
                t.to(dtype) for t in (pixels, target, log_weights, candidates)
            )
            weights = log_weights.exp()
            for k in range(weights.shape[2]):
                points = candidates[:, :, k]  # [B, N, 2]
                at_candidates = _sample(self._error_change_map(pixels, target, k, half), points)  # [B, N]
                best = at_candidates.detach().argmin(1)  # [B]
                best_point = points.detach().gather(1, best[:, None, None].expand(-1, 1, 2))[:, 0]
                fitted = self._drawn_error_change(pixels, target, best_point, k)
                change = change + (weights[:, :, k] * at_candidates).sum(1).mean() + fitted.mean()
                assignment = assignment - log_weights[:, :, k].gather(1, best[:, None]).mean()
                pooled = (weights[:, :, k, None] * points).sum(1)
                pixels = self._draw(pixels, pooled, k, opaque=True).detach()
        return SpriteSearch(change / (3 * height * width), assignment / weights.shape[2])

    def _alpha(
        self, points: torch.Tensor, k: int, size: tuple[int, int], like: torch.Tensor, opaque: bool = False
    ) -> torch.Tensor:
        """[B, 1, H, W] opacity of sprite k at ``points`` [B, 2] (its footprint alone when ``opaque``)."""
        height, width = size
        ys = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) / height
        xs = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) / width
        radius = self.log_radius[k].exp()
        fx = torch.exp(-0.5 * ((xs - points[:, 0:1]) / radius).square())  # [B, W]
        fy = torch.exp(-0.5 * ((ys - points[:, 1:2]) / radius).square())  # [B, H]
        footprint = fy[:, None, :, None] * fx[:, None, None, :]
        return footprint if opaque else torch.sigmoid(self.opacity_logit[k]) * footprint

    def _draw(self, pixels: torch.Tensor, points: torch.Tensor, k: int, opaque: bool = False) -> torch.Tensor:
        alpha = self._alpha(points, k, (pixels.shape[-2], pixels.shape[-1]), pixels, opaque)
        return pixels * (1 - alpha) + self.colour[k].view(1, 3, 1, 1) * alpha

    def _drawn_error_change(
        self, pixels: torch.Tensor, target: torch.Tensor, points: torch.Tensor, k: int
    ) -> torch.Tensor:
        """[B] summed squared-error change of drawing sprite k, fully opaque, at ``points`` [B, 2]."""
        drawn = self._draw(pixels, points, k, opaque=True)
        return ((drawn - target).square() - (pixels - target).square()).sum((1, 2, 3))

    def _error_change_map(
        self, pixels: torch.Tensor, target: torch.Tensor, k: int, half: int
    ) -> torch.Tensor:
        """[B, 1, H, W]: summed squared-error change were sprite k, fully opaque, centred on each pixel.

        With d = pixels - target and e = colour - pixels, drawing alpha = G changes the error by
        sum_x 2 G d.e + G^2 |e|^2: two Gaussian blurs, cheap at every position at once. The search
        draws the sprite opaque, not at its learned opacity: a sprite that does not yet sit on
        anything learns to fade, which would silence the very signal that moves it onto something.
        ``half``: the blur kernel's half width in pixels. No gradient reaches the sprite's colour and size.
        """
        colour, log_radius = self.colour[k].detach(), self.log_radius[k].detach()
        e = colour.view(1, 3, 1, 1) - pixels
        cross = ((pixels - target) * e).sum(1, keepdim=True)
        square = e.square().sum(1, keepdim=True)
        radius_px = log_radius.exp() * pixels.shape[-1]
        return 2 * _blur(cross, radius_px, half) + _blur(square, radius_px / math.sqrt(2), half)


def _sample(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] read bilinearly at points [B, N, 2] in [0, 1] image units -> [B, N]."""
    grid = points[:, :, None] * 2 - 1  # grid_sample's [-1, 1], pixel centres with align_corners=False
    return F.grid_sample(image, grid, align_corners=False)[:, 0, :, 0]


def _blur(image: torch.Tensor, sigma: torch.Tensor, half: int) -> torch.Tensor:
    """[B, 1, H, W] convolved with an unnormalised Gaussian exp(-r^2 / 2 sigma^2) of ``2 * half + 1`` taps
    per axis (zero outside the image)."""
    taps = torch.arange(-half, half + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma).square())
    image = F.conv2d(image, kernel.view(1, 1, -1, 1), padding=(half, 0))
    return F.conv2d(image, kernel.view(1, 1, 1, -1), padding=(0, half))
