"""Feature extraction: alignment with the image shards, the manifest record, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from data_helpers import FIVE, JOBS, PER_SHARD, Built

import distill.io
from distill.data.codec import decode_sample, read_metadata
from distill.data.dataset import load_checked_stats
from distill.data.manifest import load_manifest, manifest_path
from distill.data.shards import iter_shard, list_keys, write_shard
from distill.distributed import DistContext
from distill.features import TeacherOutput
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.check import check_dataset
from distill.preprocess.extract import ExtractConfig, TeacherJob, decode_batches, run_extraction
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.stats import FeatureStats, StatsProvenance
from distill.teachers import Teacher


def _all_shards(dataset: Path) -> list[str]:
    return [s.name for info in load_manifest(dataset).splits.values() for s in info.shards]


def _assert_one_entry_per_key(dataset: Path, teachers: tuple[str, ...] = FIVE) -> None:
    for shard in _all_shards(dataset):
        keys = list_keys(dataset / "images" / shard)
        for name in teachers:
            assert list_keys(dataset / name / shard) == keys, f"{name}/{shard}"
    leftovers = [p for name in teachers for p in (dataset / name).iterdir() if p.suffix == ".tmp"]
    assert not leftovers


def test_feature_shards_mirror_image_shards_and_manifest(built: Built) -> None:
    _assert_one_entry_per_key(built.dataset)
    manifest = load_manifest(built.dataset)
    for job in JOBS:
        record = manifest.teachers[job.name]
        assert (
            record.storage == job.storage
            and record.source == "tiny"
            and record.complete_splits == ("train", "val")
        )
        assert record.stored_grid == (job.stored_grid or record.spec.grid)
    assert manifest.teachers["sam"].spec.grid == (8, 8) and manifest.teachers["sam"].target_spec.grid == (
        4,
        4,
    )


def test_stored_features_equal_a_direct_forward(built: Built, tiny_teachers: dict[str, Teacher]) -> None:
    shard = "val-000000.tar"
    (keys, images), *_ = decode_batches(built.dataset / "images" / shard, 64, 64, 1)
    for name, tolerance in (("mae", 2e-3), ("clip", 3e-2), ("dinov2", 2e-2)):
        expected = tiny_teachers[name](images)
        stored = [
            decode_sample(s.files[f"{name}.safetensors"], s.key)
            for s in iter_shard(built.dataset / name / shard)
        ]
        assert [s.key for s in stored] == keys
        patch = torch.stack([s.patch for s in stored])
        torch.testing.assert_close(
            patch, expected.patch, atol=tolerance * float(expected.patch.abs().max()), rtol=0
        )


def test_rerun_skips_complete_shards(built: Built, tiny_teachers: dict[str, Teacher], tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    shutil.copytree(built.dataset, dataset)
    report = run_extraction(
        ExtractConfig(dataset, JOBS, batch_size=4, progress=False), tiny_teachers, DistContext()
    )
    assert (
        report.shards_written == 0
        and report.samples == 0
        and report.shards_skipped == len(_all_shards(dataset))
    )


def test_partial_work_of_a_killed_run_is_redone_exactly_once(
    built: Built, dataset_copy: Path, tiny_teachers: dict[str, Teacher]
) -> None:
    ds = dataset_copy
    (ds / "clip" / ".train-000001.tar.k1ll3d.tmp").write_bytes(b"half a shard")  # killed mid-write
    data = (ds / "clip" / "train-000002.tar").read_bytes()
    (ds / "clip" / "train-000002.tar").write_bytes(
        data[: len(data) // 2]
    )  # torn by a crash outside atomic writes
    (ds / "sam" / "val-000000.tar").unlink()  # never written
    keys = list_keys(ds / "images" / "train-000003.tar")
    with write_shard(ds / "dinov2" / "train-000003.tar") as sink:  # a shard missing its last key
        for sample in iter_shard(built.dataset / "dinov2" / "train-000003.tar"):
            if sample.key != keys[-1]:
                sink.write(sample.key, sample.files)
    report = run_extraction(
        ExtractConfig(ds, JOBS, batch_size=4, progress=False), tiny_teachers, DistContext()
    )
    redone = [
        "clip/train-000002.tar",
        "dinov2/train-000003.tar",
        "sam/val-000000.tar",
    ]  # only the damaged ones
    assert sorted(Path(p).relative_to(ds).as_posix() for p in report.written) == redone
    assert report.samples == 3 * 6  # those three 6-sample shards, through the teachers that needed them
    _assert_one_entry_per_key(ds)
    for shard in [*redone, "clip/train-000001.tar"]:  # the same features as the undamaged run
        again, before = list(iter_shard(ds / shard)), list(iter_shard(built.dataset / shard))
        assert [s.key for s in again] == [s.key for s in before]
        for new, old in zip(again, before, strict=True):
            (blob_new,), (blob_old,) = new.files.values(), old.files.values()
            assert read_metadata(blob_new, shard) == read_metadata(blob_old, shard)
            torch.testing.assert_close(
                decode_sample(blob_new, shard).patch, decode_sample(blob_old, shard).patch
            )
    assert check_dataset(ds).ok


def test_sigkill_mid_extraction_then_rerun(
    built: Built, tiny_teachers: dict[str, Teacher], tmp_path: Path
) -> None:
    ds = tmp_path / "big"
    organize_images(OrganizeConfig(built.source, ds, size=64, samples_per_shard=100))
    command = [
        sys.executable,
        "-m",
        "distill.preprocess.extract",
        str(ds),
        "--teachers",
        *FIVE,
        "--source",
        "tiny",
    ]
    command += ["--storage", "int8", "--batch-size", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    temporaries: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None and not temporaries:
        temporaries = list(ds.glob("*/.*.tmp"))
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    log = process.stderr.read().decode() if process.stderr is not None else ""
    assert temporaries, f"extraction ended before it could be killed: {log[-2000:]}"
    assert list(ds.glob("*/.*.tmp")), "a killed run leaves its temporary file behind"
    assert all(not r.complete_splits for r in load_manifest(ds).teachers.values())
    jobs = tuple(TeacherJob(name, "tiny", None, "int8") for name in FIVE)
    run_extraction(ExtractConfig(ds, jobs, batch_size=8, progress=False), tiny_teachers, DistContext())
    _assert_one_entry_per_key(ds)
    assert all(r.complete_splits == ("train", "val") for r in load_manifest(ds).teachers.values())


def test_differently_made_features_are_not_mixed(
    dataset_copy: Path, tiny_teachers: dict[str, Teacher]
) -> None:
    jobs = (TeacherJob("clip", "tiny", None, "fp16"),)
    with pytest.raises(ValueError, match=r"teacher 'clip' were extracted differently.*--overwrite"):
        run_extraction(ExtractConfig(dataset_copy, jobs, progress=False), tiny_teachers, DistContext())
    run_extraction(
        ExtractConfig(dataset_copy, jobs, overwrite=True, progress=False), tiny_teachers, DistContext()
    )
    assert load_manifest(dataset_copy).teachers["clip"].storage == "fp16"
    blob = next(iter_shard(dataset_copy / "clip" / "train-000000.tar")).files["clip.safetensors"]
    assert decode_sample(blob, "x").storage == "fp16"
    with pytest.raises(ValueError, match="between 1x1 and its grid"):
        run_extraction(
            ExtractConfig(dataset_copy, (TeacherJob("sam", "tiny", None, "int8", (16, 16)),), progress=False),
            tiny_teachers,
            DistContext(),
        )


def test_a_resume_in_another_teacher_precision_is_refused_and_stats_follow_the_record(
    built: Built, dataset_copy: Path, tiny_teachers: dict[str, Teacher], tmp_path: Path
) -> None:
    ds = dataset_copy
    before = load_manifest(ds).teachers
    assert {r.precision for r in before.values()} == {"fp32"}  # "auto" on CPU, resolved
    with pytest.raises(
        ValueError,
        match=rf"{manifest_path(ds)}: features of teacher 'clip' were extracted differently.*"
        r"'precision': 'fp32'.*'precision': 'bf16'.*pass --precision fp32 to resume.*--overwrite",
    ):
        run_extraction(
            ExtractConfig(ds, JOBS, precision="bf16", progress=False), tiny_teachers, DistContext()
        )
    assert load_manifest(ds).teachers == before

    mae = tuple(job for job in JOBS if job.name == "mae")
    run_extraction(
        ExtractConfig(ds, mae, precision="bf16", overwrite=True, progress=False), tiny_teachers, DistContext()
    )
    record = load_manifest(ds).teachers["mae"]
    assert record.precision == "bf16" and record.complete_splits == ("train", "val")
    with pytest.raises(
        ValueError, match=r"mae\.safetensors: .*precision: stats 'fp32', here 'bf16'.*distill-stats"
    ):
        load_checked_stats(built.stats_dir, "mae", record, load_manifest(ds), ds)
    compute_stats(StatsConfig(ds, ("mae",), "train", tmp_path / "stats"))
    stats = load_checked_stats(tmp_path / "stats", "mae", record, load_manifest(ds), ds)
    assert stats.provenance is not None and stats.provenance.precision == "bf16"


def test_records_without_a_precision_read_as_fp32_and_resume(
    built: Built, dataset_copy: Path, tiny_teachers: dict[str, Teacher]
) -> None:
    """Manifests and stats written before the precision was recorded: their teachers ran in fp32."""
    data = json.loads(manifest_path(dataset_copy).read_text())
    for record in data["teachers"].values():
        del record["precision"]
    manifest_path(dataset_copy).write_text(json.dumps(data))
    assert {r.precision for r in load_manifest(dataset_copy).teachers.values()} == {"fp32"}
    report = run_extraction(
        ExtractConfig(dataset_copy, JOBS, precision="fp32", progress=False), tiny_teachers, DistContext()
    )
    assert report.shards_written == 0 and report.shards_skipped == len(_all_shards(dataset_copy))
    provenance = FeatureStats.load(built.stats_dir / "clip.safetensors").provenance
    assert provenance is not None and provenance.precision == "fp32"
    old = {k: v for k, v in json.loads(provenance.to_json()).items() if k != "precision"}
    assert StatsProvenance.from_json(json.dumps(old)) == provenance
    with pytest.raises(ValueError, match="precision must be one of bf16, fp32, got 'fp8'"):
        StatsProvenance.from_json(json.dumps({**old, "precision": "fp8"}))


@pytest.mark.parametrize("field", ["batch_size", "decode_threads"])
def test_non_positive_batch_or_threads_are_refused(field: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"{field} \(0\)"):
        ExtractConfig(dataset=tmp_path, teachers=(), **{field: 0})


def _without_clip_features(ds: Path) -> list[str]:
    """Delete clip's feature shards (so a run writes every one of them); the shard names, in order."""
    shards = _all_shards(ds)
    for shard in shards:
        (ds / "clip" / shard).unlink()
    return shards


CLIP_ONLY = (TeacherJob("clip", "tiny", None, "int8"),)


def test_the_forward_loop_goes_on_while_a_shard_is_finished(
    dataset_copy: Path, tiny_teachers: dict[str, Teacher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard's fsyncs and rename run on the writer thread: the next shard's forward pass starts
    before the first shard is in place (finishing it on the forward loop left the GPU idle)."""
    _without_clip_features(dataset_copy)
    forwards: list[int] = []
    next_shard_started = threading.Event()

    def count(*_: object) -> None:
        forwards.append(1)
        if len(forwards) == 2:  # batch_size = PER_SHARD: the second forward pass is the second shard's
            next_shard_started.set()

    seen_at_first_finish: list[bool] = []
    sync = distill.io.fsync_path

    def gated(path: str | Path) -> None:  # atomic_path syncs the folder after renaming a shard in
        if Path(path).name == "clip" and not seen_at_first_finish:
            seen_at_first_finish.append(next_shard_started.wait(timeout=30))
        sync(path)

    monkeypatch.setattr(distill.io, "fsync_path", gated)
    hook = tiny_teachers["clip"].register_forward_hook(count)
    try:
        report = run_extraction(
            ExtractConfig(dataset_copy, CLIP_ONLY, batch_size=PER_SHARD, progress=False),
            {"clip": tiny_teachers["clip"]},
            DistContext(),
        )
    finally:
        hook.remove()
    assert seen_at_first_finish == [True], "the first shard was finished before the next shard's forward pass"
    assert report.shards_written == len(_all_shards(dataset_copy))
    _assert_one_entry_per_key(dataset_copy, ("clip",))


def test_a_failed_write_leaves_only_complete_shards_and_a_rerun_finishes(
    built: Built, dataset_copy: Path, tiny_teachers: dict[str, Teacher]
) -> None:
    """Non-finite features in the third shard fail the run on the writer thread: the error reaches the
    caller naming the key, no temporary file or partial shard is left, and a rerun writes what is
    missing."""
    shards = _without_clip_features(dataset_copy)
    forwards: list[int] = []

    def poison(_: object, __: object, out: TeacherOutput) -> TeacherOutput | None:
        forwards.append(1)
        return TeacherOutput(out.patch * float("nan"), out.cls) if len(forwards) == 3 else None

    bad_keys = list_keys(dataset_copy / "images" / shards[2])
    hook = tiny_teachers["clip"].register_forward_hook(poison)
    try:
        with pytest.raises(ValueError, match=rf"non-finite patch features for key '{bad_keys[0]}'"):
            run_extraction(
                ExtractConfig(dataset_copy, CLIP_ONLY, batch_size=PER_SHARD, progress=False),
                {"clip": tiny_teachers["clip"]},
                DistContext(),
            )
    finally:
        hook.remove()
    present = [shard for shard in shards if (dataset_copy / "clip" / shard).exists()]
    assert shards[:2] == present[:2] and shards[2] not in present
    for shard in present:
        assert list_keys(dataset_copy / "clip" / shard) == list_keys(dataset_copy / "images" / shard)
    assert not list((dataset_copy / "clip").glob(".*.tmp"))
    report = run_extraction(
        ExtractConfig(dataset_copy, CLIP_ONLY, batch_size=PER_SHARD, progress=False),
        {"clip": tiny_teachers["clip"]},
        DistContext(),
    )
    assert report.shards_written == len(shards) - len(present)
    _assert_one_entry_per_key(dataset_copy, ("clip",))
    for shard in shards:  # the same features as the session's run
        again, before = (
            list(iter_shard(dataset_copy / "clip" / shard)),
            list(iter_shard(built.dataset / "clip" / shard)),
        )
        assert [s.key for s in again] == [s.key for s in before]
