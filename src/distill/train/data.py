"""The trainer's side of ``distill.data.loader``: config keys -> LoaderConfig, checked up front.

One loader batch is one micro-batch of ``training.batch_size`` samples per rank, so the
loader's ``global_batch`` is ``batch_size x world size`` and an optimiser step consumes
``grad_accum`` loader batches: the loader position of step ``k`` is ``k x grad_accum``.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterator
from dataclasses import replace
from pathlib import Path

import torch

from distill.data.dataset import Batch
from distill.data.loader import LoaderConfig, eval_batches, train_batches
from distill.data.manifest import default_stats_dir
from distill.distributed import DistContext
from distill.stats import FeatureStats
from distill.train.config import RunConfig
from distill.train.typed import ConfigError


def dataset_dir(cfg: RunConfig) -> Path:
    return Path(cfg.dataset.root) / cfg.dataset.name


def check_geometry(cfg: RunConfig, world_size: int) -> None:
    """The loader's stream rules, reported with the config keys to change."""
    streams, batch = cfg.dataset.num_streams, cfg.training.batch_size
    if streams < 1:
        raise ConfigError(f"dataset.num_streams: must be >= 1, got {streams}")
    if streams % world_size:
        raise ConfigError(f"dataset.num_streams: {streams} is not a multiple of the world size {world_size}")
    if (batch * world_size) % streams:
        raise ConfigError(
            f"training.batch_size: {batch} x {world_size} rank(s) = {batch * world_size} samples per batch is not "
            f"a multiple of dataset.num_streams={streams}"
        )
    if cfg.dataset.num_workers > streams // world_size:
        raise ConfigError(
            f"dataset.num_workers: {cfg.dataset.num_workers} exceeds the {streams // world_size} stream(s) of each rank "
            "(dataset.num_streams / world size)"
        )


def stats_dir_of(cfg: RunConfig) -> Path:
    """``dataset.stats_dir``, or the dataset's own ``feature_stats/`` when it is null."""
    return Path(cfg.dataset.stats_dir) if cfg.dataset.stats_dir else default_stats_dir(dataset_dir(cfg))


class LoaderPlan:
    """Builds the training stream and the validation pass for one run.

    ``stats`` are the offline teachers' stats, already resolved and checked by the trainer's
    setup: the loader normalises with exactly these (what the student also saves).
    """

    def __init__(
        self, cfg: RunConfig, offline: list[str], ctx: DistContext, stats: dict[str, FeatureStats]
    ) -> None:
        check_geometry(cfg, ctx.world_size)
        data = cfg.dataset
        self.stats_dir = stats_dir_of(cfg)
        self.val_split = data.val_split
        self.stats = {name: stats[name] for name in offline}
        self.config = LoaderConfig(
            dataset=dataset_dir(cfg),
            teachers=tuple(offline),
            stats_dir=self.stats_dir,
            stats=self.stats,
            normalize=True,
            split=data.train_split,
            global_batch=cfg.training.batch_size * ctx.world_size,
            num_streams=data.num_streams,
            seed=cfg.seed,
            shuffle_buffer=data.shuffle_buffer,
            max_buffer_bytes=None if data.max_buffer_gb is None else int(data.max_buffer_gb * 1e9),
            num_workers=data.num_workers,
            eval_split=data.val_split or data.train_split,
            eval_batch=data.val_batch_size or cfg.training.batch_size,
            pin_memory=ctx.device.type == "cuda",
            # on GPU, workers ship stored (compact) features and the batch is finished on the device
            device=str(ctx.device) if ctx.device.type == "cuda" else None,
            device_prefetch=data.device_prefetch,
        )
        self.ctx = ctx

    def train(self, start_batch: int) -> Generator[Batch, None, None]:
        return train_batches(self.config, self.ctx.rank, self.ctx.world_size, start_batch=start_batch)

    def val(self) -> Iterator[Batch]:
        if self.val_split is None:
            raise RuntimeError("no validation split configured (dataset.val_split is null)")
        return eval_batches(self.config, self.ctx.rank, self.ctx.world_size)

    def first_images(self, batches: int) -> Iterator[torch.Tensor]:
        """Images of global batches ``0 .. batches-1`` (this rank's part), without teacher features."""
        # no prefetch: a batch made ahead here would be thrown away
        plain = replace(self.config, teachers=(), num_workers=0, device_prefetch=0)
        stream = train_batches(plain, self.ctx.rank, self.ctx.world_size, start_batch=0)
        return (batch.images for batch in itertools.islice(stream, batches))
