"""Creating and replacing a dataset folder: never silently over an existing one."""

from __future__ import annotations

import logging
from pathlib import Path

from distill.data.manifest import IMAGES_DIR, MANIFEST_NAME, TARGET_IMAGES_DIR, load_manifest
from distill.preprocess.rejected import REJECTED_NAME

log = logging.getLogger(__name__)


def prepare_dataset_dir(dataset: Path, overwrite: bool) -> None:
    """Make ``dataset`` ready for a fresh build.

    An existing dataset is an error unless ``overwrite``; then its image shards (both sides of a paired
    dataset), the feature
    shards of every teacher its manifest lists, the manifest and rejected.txt are removed
    (other files are left alone).
    """
    images = dataset / IMAGES_DIR
    existing = (dataset / MANIFEST_NAME).exists() or (images.is_dir() and any(images.glob("*.tar")))
    if existing and not overwrite:
        raise FileExistsError(
            f"{dataset} already holds a dataset (or the shards of an interrupted build); "
            "pass --overwrite to replace it (its feature shards go too)"
        )
    if existing:
        teachers: list[str] = []
        if (dataset / MANIFEST_NAME).exists():
            teachers = sorted(load_manifest(dataset).teachers)
        for folder in [images, dataset / TARGET_IMAGES_DIR, *(dataset / t for t in teachers)]:
            for shard in folder.glob("*.tar"):
                shard.unlink()
        for name in (MANIFEST_NAME, REJECTED_NAME):
            (dataset / name).unlink(missing_ok=True)
        log.info("cleared the old dataset in %s (teachers: %s)", dataset, teachers or "none")
    images.mkdir(parents=True, exist_ok=True)
