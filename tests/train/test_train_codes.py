"""A quantised student in the trainer: codebook use is logged in training and validation records, and
validation's figures are those of the codes of every validation image."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from test_train_guards import in_process, small_run
from train_helpers import TinyData, metric_records

from distill.data.dataset import Batch
from distill.distributed import DistContext
from distill.features import TeacherOutput
from distill.losses import LossConfig
from distill.models import Student, StudentConfig
from distill.models.quantize import VectorQuantizer, code_histogram, usage_metrics
from distill.teachers import load_teacher
from distill.train.trainer import train
from distill.train.validate import evaluate


@pytest.mark.parametrize("keypoints", [0, 2])
def test_validation_reports_the_code_use_of_the_whole_split(keypoints: int) -> None:
    torch.manual_seed(0)
    spec = load_teacher("dinov2", "tiny", device="cpu").spec
    config = StudentConfig.from_preset(
        "tiny",
        {"dinov2": spec},
        image_size=32,
        quantizer="fsq",
        fsq_levels=(3, 3, 3, 3),
        z_keypoints=keypoints,
    )
    student = Student(config, load_pretrained=False).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = student(images)
    targets = {"dinov2": TeacherOutput(out.features["dinov2"].patch, out.features["dinov2"].cls)}
    batches = [
        Batch(
            [f"k{i}" for i in index],
            images[index],
            {
                n: TeacherOutput(t.patch[index], t.cls[index] if t.cls is not None else None)
                for n, t in targets.items()
            },
        )
        for index in ([0, 1, 2], [3, 4])
    ]
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    metrics = evaluate(
        student, config, batches, lambda batch, _: batch.targets, LossConfig(), ctx, contextlib.nullcontext
    )
    with torch.no_grad():
        codes = student.encode(images, codes=True)
    groups = (32 - 2 * keypoints) // 4  # use is measured over the summary's codes, not the keypoint cells
    assert codes.shape[1] == groups + 2 * keypoints
    expected = usage_metrics(code_histogram(codes[:, :groups], 81))
    assert metrics["codes/perplexity"] == pytest.approx(expected["codes/perplexity"], rel=1e-12)
    assert metrics["codes/dead"] == expected["codes/dead"] > 0.9  # 5 images use few of 81 codes


@pytest.mark.parametrize("keypoints", [(), ("model.z_keypoints=4", "model.keypoint_sprites=true")])
def test_a_vq_run_logs_codebook_use_and_exports_its_codebook(
    tiny_data: TinyData, tmp_path: Path, keypoints: tuple[str, ...]
) -> None:
    # with 4 keypoints: 24 summary dimensions (3 codes of 16), 8 coordinates on the 64-level grid
    cfg, resolved = in_process(
        small_run(
            tiny_data,
            tmp_path,
            "vq",
            "model.quantizer=vq",
            "model.vq_code_dim=8",
            "model.vq_codebook_size=16",
            *keypoints,
        )
    )
    run_dir = train(cfg, resolved)
    records = metric_records(run_dir)
    kinds = {record["kind"] for record in records if "codes/perplexity" in record}
    assert kinds == {"train", "val"}
    for record in records:
        if record["kind"] == "train":
            assert 1.0 <= record["codes/perplexity"] <= 16 and 0 <= record["codes/dead"] < 1
            assert record["quantizer/commit"] > 0
    student = Student.from_pretrained(run_dir / "student")
    ema = Student.from_pretrained(run_dir / "student_ema")
    assert isinstance(student.quantizer, VectorQuantizer) and isinstance(ema.quantizer, VectorQuantizer)
    assert torch.equal(student.quantizer.codebook, ema.quantizer.codebook)  # a buffer: copied, not averaged
