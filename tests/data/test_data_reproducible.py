"""Feature and stats files are byte-reproducible: two extractions of the same shards, in two processes,
write identical bytes (content hashes, deduplication and caches depend on it).

The safetensors library writes its metadata map in hash order, which differs between processes (and
between maps in one process); ``distill.tensorfile`` writes it sorted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from data_helpers import Built
from safetensors.torch import load

from distill.data.codec import encode_batch, read_metadata
from distill.data.loader import LoaderConfig, train_batches
from distill.data.manifest import load_manifest
from distill.preprocess.check import check_dataset
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.tensorfile import canonical, dumps


def test_metadata_order_does_not_change_the_bytes() -> None:
    tensors = {"patch": torch.arange(12, dtype=torch.int8).reshape(2, 2, 3), "scale": torch.ones(3)}
    forward = {f"k{i}": str(i) for i in range(8)}
    backward = dict(reversed(list(forward.items())))
    blob = dumps(tensors, forward)
    assert blob == dumps(tensors, backward)
    assert canonical(blob) == blob
    back = load(blob)
    assert torch.equal(back["patch"], tensors["patch"]) and torch.equal(back["scale"], tensors["scale"])
    assert read_metadata(blob, "blob") == forward


def _child(code: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, env=env, timeout=120
    ).stdout


def test_feature_blobs_equal_across_processes() -> None:
    """The codec in two fresh interpreters: every per-sample blob is the same bytes."""
    code = (
        "import sys, torch\n"
        "from distill.data.codec import encode_batch\n"
        "torch.manual_seed(0)\n"
        "patch, cls = torch.randn(4, 3, 3, 8), torch.randn(4, 5)\n"
        "blobs = encode_batch([f'k{i}' for i in range(4)], 'dinov2', patch, cls, 'int8')\n"
        "sys.stdout.buffer.write(b''.join(blobs))\n"
    )
    first, second = _child(code), _child(code)
    assert first == second
    torch.manual_seed(0)
    patch, cls = torch.randn(4, 3, 3, 8), torch.randn(4, 5)
    assert b"".join(encode_batch([f"k{i}" for i in range(4)], "dinov2", patch, cls, "int8")) == first


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in {"manifest.json", ".manifest.lock", "rejected.txt"}
    }


def test_two_extractions_and_stats_runs_write_identical_files(built: Built, tmp_path: Path) -> None:
    """The real commands, twice each in separate processes, over the same image shards."""
    first = tmp_path / "first"
    organize_images(OrganizeConfig(built.source / "val", first, size=32, samples_per_shard=3))
    second = tmp_path / "second"
    shutil.copytree(first, second)
    env = {**os.environ, "PYTHONHASHSEED": "random", "OMP_NUM_THREADS": "1"}
    extract = [
        "distill.preprocess.extract",
        "--teachers",
        "dinov2",
        "sam",
        "--source",
        "tiny",
        "--storage",
        "int8",
    ]
    extract += [
        "--storage-for",
        "dinov2=bf16",
        "--stored-grid",
        "sam=4x4",
        "--outlier-tokens",
        "sam=2",
        "--no-progress",
    ]
    for dataset in (first, second):
        for command in ([*extract, str(dataset)], ["distill.preprocess.calc_stats", str(dataset)]):
            subprocess.run(
                [sys.executable, "-m", *command], check=True, env=env, capture_output=True, timeout=300
            )
    one, two = _digests(first), _digests(second)
    assert any(name.startswith("dinov2/") for name in one) and any(
        name.startswith("feature_stats/") for name in one
    )
    assert one == two
    # the outlier-token option end to end: recorded, checked, served
    manifest = load_manifest(first)
    assert manifest.teachers["sam"].outlier_tokens == 2 and manifest.teachers["sam"].storage_label.startswith(
        "int8+2"
    )
    assert check_dataset(first).ok
    batch = next(
        train_batches(
            LoaderConfig(first, ("dinov2", "sam"), None, split="train", global_batch=2, num_streams=1)
        )
    )
    assert batch.targets["sam"].patch.shape[1:3] == (4, 4)
