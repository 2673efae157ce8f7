"""distill.encode: the export equals Student.encode, carries the frames' arrays, resumes after SIGKILL, runs under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from latent_helpers import FRAMES, planted_action, save_tiny_student, write_frames_dataset

from distill.data.clips import video_clips
from distill.data.latents import (
    CheckpointRef,
    load_latent_manifest,
    read_header,
    read_video_latents,
    video_path,
)
from distill.demo.pipeline import REPO, torchrun
from distill.distributed import DistContext
from distill.encode import EncodeConfig, run_encoding
from distill.models import Student


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_frames_dataset(tmp_path_factory.mktemp("encode"))


@pytest.fixture(scope="module")
def student(frames: Path) -> tuple[Path, Student]:
    directory = frames.parent / "student"
    return directory, save_tiny_student(directory)


def _encode(frames: Path, student: tuple[Path, Student], output: Path, **kwargs: object) -> None:
    directory, model = student
    ref = CheckpointRef.of(directory, model.config.d_z, model.config.image_size)
    run_encoding(EncodeConfig(directory, frames, output, batch_size=16, **kwargs), model, ref, DistContext())  # type: ignore[arg-type]


def test_export_equals_model_encode_with_the_frames_arrays(
    frames: Path, student: tuple[Path, Student], tmp_path: Path
) -> None:
    _encode(frames, student, tmp_path / "latents")
    manifest = load_latent_manifest(tmp_path / "latents")
    model = student[1]
    assert [n for _, n in manifest.splits["train"]] == list(FRAMES)
    assert manifest.arrays == {"action": 2, "state": 1}
    assert manifest.checkpoint.d_z == 8 and manifest.checkpoint.config_sha256
    clips = {c.video_id: c for c in video_clips(frames, clip_len=100, allow_short=True)}
    for number, (video_id, count) in enumerate(manifest.splits["train"]):
        latents = read_video_latents(
            video_path(tmp_path / "latents", "train", video_id), manifest.checkpoint.fingerprint
        )
        with torch.inference_mode():
            expected = model.encode(clips[video_id].frames)
        assert torch.equal(latents.z, expected)  # exact on CPU: the same frames, the same forward
        assert latents.frame_indices.tolist() == list(range(count))
        torch.testing.assert_close(latents.timestamps, torch.arange(count, dtype=torch.float64) / 8)
        planted = torch.tensor([planted_action(number, t) for t in range(count)], dtype=torch.float64)
        assert torch.equal(latents.arrays["action"], planted)


def test_latents_of_another_checkpoint_are_refused(
    frames: Path, student: tuple[Path, Student], tmp_path: Path
) -> None:
    output = tmp_path / "latents"
    _encode(frames, student, output)
    other = tmp_path / "other"
    model = save_tiny_student(other, seed=1)
    ref = CheckpointRef.of(other, 8, 32)
    with pytest.raises(ValueError, match=r"holds latents of checkpoint .*pass --overwrite"):
        run_encoding(EncodeConfig(other, frames, output), model, ref, DistContext())
    run_encoding(EncodeConfig(other, frames, output, overwrite=True), model, ref, DistContext())
    assert load_latent_manifest(output).checkpoint.fingerprint == ref.fingerprint


def _command(student: Path, frames: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill.encode",
        str(student),
        str(frames),
        str(output),
        "--batch-size",
        "1",
    ]


def _contents(root: Path) -> tuple[object, dict[str, torch.Tensor]]:
    """A latent dataset's meaning: file names, manifest, headers (no temporaries), and every tensor."""
    manifest = load_latent_manifest(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    headers, tensors = [], dict[str, torch.Tensor]()
    for split, videos in manifest.splits.items():
        for video_id, _ in videos:
            path = video_path(root, split, video_id)
            headers.append(read_header(path))
            latents = read_video_latents(path, manifest.checkpoint.fingerprint)
            tensors |= {f"{video_id}/z": latents.z, f"{video_id}/frames": latents.frame_indices}
            tensors |= {f"{video_id}/{name}": array for name, array in latents.arrays.items()}
    return (files, manifest, headers), tensors


def _assert_same(a: Path, b: Path, atol: float) -> None:
    (meta_a, tensors_a), (meta_b, tensors_b) = _contents(a), _contents(b)
    assert meta_a == meta_b
    torch.testing.assert_close(tensors_a, tensors_b, rtol=0, atol=atol)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_export_then_rerun_equals_one_uninterrupted_run(tmp_path: Path) -> None:
    frames = write_frames_dataset(tmp_path, frames=(24,) * 5)
    directory = tmp_path / "student"
    model = save_tiny_student(directory)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _encode(frames, (directory, model), reference)
    process = subprocess.Popen(
        _command(directory, frames, killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and process.poll() is None
        and not list(killed.glob("train/*.safetensors"))
    ):
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    log = process.stderr.read().decode() if process.stderr is not None else ""
    done = list(killed.glob("train/*.safetensors"))
    assert done and not (killed / "latents.json").exists(), (
        f"the export was not killed mid-run: {log[-2000:]}"
    )
    assert len(done) < 5
    result = subprocess.run(
        _command(directory, frames, killed), env=ENV, check=True, capture_output=True, text=True
    )
    assert f'"skipped": {len(done)}' in result.stdout  # finished videos are not encoded twice
    _assert_same(killed, reference, atol=1e-6)  # no loss, no duplicate, no stray temporary


def test_two_ranks_split_the_videos_and_equal_one_process(
    frames: Path, student: tuple[Path, Student], tmp_path: Path
) -> None:
    """Rank r of W encodes videos r, r + W, ...; rank 0 lists them all (collectives are no-ops here)."""
    directory, model = student
    ref = CheckpointRef.of(directory, 8, 32)
    single, double = tmp_path / "single", tmp_path / "double"
    _encode(frames, student, single)
    cfg = EncodeConfig(directory, frames, double, batch_size=16)
    second = run_encoding(cfg, model, ref, DistContext(rank=1, world_size=2))
    assert [Path(p).name for p in second.written] == ["v1.safetensors"]
    assert not (double / "latents.json").exists()  # only rank 0 writes the manifest
    first = run_encoding(cfg, model, ref, DistContext(rank=0, world_size=2))
    assert [Path(p).name for p in first.written] == ["v0.safetensors", "v2.safetensors"]
    _assert_same(double, single, atol=0)


@pytest.mark.slow
def test_torchrun_two_processes_give_the_single_process_dataset(
    frames: Path, student: tuple[Path, Student], tmp_path: Path
) -> None:
    """``torchrun --nproc_per_node 2 scripts/encode_latents.py`` (gloo, CPU): rank r encodes videos r, r + 2;
    the dataset equals one process's, tensor for tensor (both with one thread and the same batches)."""
    single, double = tmp_path / "single", tmp_path / "double"
    arguments = [str(student[0]), str(frames), "--batch-size", "4"]
    commands = {
        single: [sys.executable, str(REPO / "scripts" / "encode_latents.py")],
        double: torchrun(2, "encode_latents.py"),
    }
    reports = {}
    for output, launcher in commands.items():
        done = subprocess.run(
            [*launcher, *arguments[:2], str(output), *arguments[2:]],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{launcher[-1]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        reports[output] = json.loads(done.stdout.strip().splitlines()[-1])
    # rank 0 reports its own share: videos 0 and 2 of 3 (rank 1 wrote video 1)
    assert (reports[single]["written"], reports[double]["written"]) == (3, 2)
    _assert_same(double, single, atol=0)
