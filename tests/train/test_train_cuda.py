"""The real script on a GPU (skipped elsewhere): bf16 autocast, fused AdamW, nccl under torchrun, the
loader's device path (prefetch stream, page-locked slots), CLIP online on the GPU, and a resume that
restores the CUDA generator. Run there with ``pytest tests/train/test_train_cuda.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from train_helpers import REFERENCE_TRAINING, TinyData, data_overrides, metric_records, run_train

from distill.models import Student

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (a GPU machine)")

DEVICE = "cuda"
BATCH = 8  # one process: the reference run's global batch of 2 ranks x 4
# bf16 autocast against the CPU's fp32: the same trajectory within bf16's rounding, compounded over 8 steps
LOSS_REL = 0.05


@pytest.fixture(scope="module")
def base(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    output = tmp_path_factory.mktemp("cuda_runs")
    return [
        *data_overrides(tiny_data),
        *REFERENCE_TRAINING,
        f"output_dir={output}",
        f"training.batch_size={BATCH}",
    ]


@pytest.fixture(scope="module")
def gpu_run(base: list[str]) -> Path:
    """One process under torchrun (nccl), every GPU path on."""
    result = run_train([*base, "run_name=gpu", f"device={DEVICE}", "dataset.num_workers=2"], nproc=1)
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(OmegaConf.from_dotlist(base).output_dir) / "gpu"


def test_a_gpu_run_follows_the_cpu_run(base: list[str], gpu_run: Path) -> None:
    cpu = run_train([*base, "run_name=cpu", "device=cpu"])
    assert cpu.returncode == 0, cpu.stderr[-4000:]
    want, got = metric_records(gpu_run.parent / "cpu", "train"), metric_records(gpu_run, "train")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [2, 4, 6, 8]
    losses = [(round(w["loss"], 4), round(g["loss"], 4)) for w, g in zip(want, got, strict=True)]
    assert all(g == pytest.approx(w, rel=LOSS_REL) for w, g in losses), f"(cpu, gpu) losses {losses}"
    assert got[-1]["loss"] < 0.9 * got[0]["loss"], losses
    assert OmegaConf.load(gpu_run / "config.yaml").device == DEVICE
    student = Student.from_pretrained(gpu_run / "student")  # saved from the GPU, loaded on the CPU
    assert all(torch.isfinite(p).all() for p in student.state_dict().values())


def test_a_gpu_run_resumed_from_a_checkpoint_ends_where_it_ended(base: list[str], gpu_run: Path) -> None:
    """Resumed from step 6 (generators, optimiser, loader position, online stats), steps 7-8 retrace the
    run's; GPU kernels of the same shapes in the same order give the same numbers up to atomics' order."""
    checkpoint = gpu_run / "checkpoints" / "step_00000006"
    run_dir = gpu_run.parent / "resumed"
    # CLIP's stats as the run estimated them (its run dir's copy, which a resume reads): estimated
    # again, on a GPU in bf16, they need not be bit-identical to the ones the checkpoint was trained with
    shutil.copytree(gpu_run / "feature_stats", run_dir / "feature_stats")
    overrides = ["run_name=resumed", f"device={DEVICE}", "dataset.num_workers=2", f"resume={checkpoint}"]
    resumed = run_train([*base, *overrides], nproc=1)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    want = load_file(str(gpu_run / "student" / "model.safetensors"))
    got = load_file(str(run_dir / "student" / "model.safetensors"))
    worst = max(float((want[k] - got[k]).abs().max()) for k in want)
    assert worst <= 1e-4, f"resumed weights differ by up to {worst}"
    final_want, final_got = metric_records(gpu_run, "train")[-1], metric_records(run_dir, "train")[-1]
    assert final_got["step"] == final_want["step"] == 8
    assert final_got["loss"] == pytest.approx(final_want["loss"], rel=1e-4)
