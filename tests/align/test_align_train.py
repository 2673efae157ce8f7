"""preset=align through the real trainer: only adapters and chosen heads move, outputs load strictly, resume is exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from distill.data.manifest import load_manifest
from distill.models import Student, StudentConfig
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, extract_features
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.stats import FeatureStats
from distill.synthetic import write_paired_folders
from distill.train.adapter import AdapterConfig, StudentAdapter
from distill.train.config import load_run_config

REPO = Path(__file__).resolve().parents[2]
SIZE = 32


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A paired dataset (inverted scenes -> clean scenes, tiny DINOv2) and an init student folder."""
    root = tmp_path_factory.mktemp("align")
    for split, seed in (("train", 0), ("val", 1)):
        write_paired_folders(
            root / "src" / split,
            root / "tgt" / split,
            "invert",
            2,
            8 if split == "train" else 2,
            (40, 32),
            seed,
        )
    dataset = root / "data" / "paired"
    organize_images(
        OrganizeConfig(root / "src", dataset, size=SIZE, samples_per_shard=4, target=root / "tgt")
    )
    extract_features(ExtractConfig(dataset, (TeacherJob("dinov2", "tiny"),), device="cpu", progress=False))
    compute_stats(StatsConfig(dataset=dataset, output_dir=root / "stats"))
    spec = load_manifest(dataset).teachers["dinov2"].target_spec
    torch.manual_seed(0)
    init = Student(
        StudentConfig.from_preset("tiny", {"dinov2": spec}, image_size=SIZE), load_pretrained=False
    )
    init.save_pretrained(root / "init", {"dinov2": FeatureStats.load(root / "stats" / "dinov2.safetensors")})
    return dataset, root / "init"


def _train(dataset: Path, init: Path, output: Path, name: str, *extra: str) -> None:
    overrides = [
        f"dataset.root={dataset.parent}",
        f"dataset.name={dataset.name}",
        "dataset.num_streams=2",
        "teachers=dinov2",
        "teacher_source=tiny",
        "model=tiny",
        "device=cpu",
        "preset=align",
        f"init_from={init}",
        "adapter.rank=4",
        "adapter.train=[heads.dinov2]",
        "training.batch_size=4",
        "training.steps=4",
        "training.lr=1e-2",
        "training.warmup_steps=0",
        "training.val_every=2",
        "training.checkpoint_every=2",
        "training.keep_last=0",
        "logging.log_every=1",
        f"output_dir={output}",
        f"run_name={name}",
        *extra,
    ]
    env = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_rvfm.py"), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_align_moves_only_adapters_and_chosen_heads_and_resumes_exactly(
    paired: tuple[Path, Path], tmp_path: Path
) -> None:
    dataset, init = paired
    _train(dataset, init, tmp_path, "aligned")
    run = tmp_path / "aligned"
    start, merged = (
        load_file(str(init / "model.safetensors")),
        load_file(str(run / "student" / "model.safetensors")),
    )
    assert merged.keys() == start.keys()
    changed = sorted(k for k in start if not torch.equal(start[k], merged[k]))
    adapted = [
        k for k in start if k.startswith("backbone.") and k.endswith(("q_proj.weight", "v_proj.weight"))
    ]
    head = [k for k in start if k.startswith("heads.dinov2.")]
    assert adapted and head
    assert set(adapted) <= set(changed) and set(changed) <= set(adapted) | set(head)
    assert set(head) & set(changed), "the chosen head did not train"
    # every other tensor, z batch norm's running statistics included, is bit-identical
    assert any(k.startswith("to_z.z_norm.running_") for k in start) and not any(
        "running_" in k for k in changed
    )

    # the adapter folder on the init student reproduces the merged student; both load strictly
    student = Student.from_pretrained(init)
    adapter = StudentAdapter(student, student_adapter_config(run))
    adapter.load(run / "adapter")
    loaded = Student.from_pretrained(run / "student")
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(images).features["dinov2"].patch,
            student(images).features["dinov2"].patch,
            rtol=1e-4,
            atol=1e-4,
        )

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [0, 2, 4]  # before, and as it goes

    _train(dataset, init, tmp_path, "resumed", f"resume={run / 'checkpoints' / 'step_00000002'}")
    resumed = load_file(str(tmp_path / "resumed" / "student" / "model.safetensors"))
    assert all(torch.equal(resumed[k], merged[k]) for k in merged), "a resumed alignment left the trajectory"


def student_adapter_config(run: Path) -> AdapterConfig:
    """The adapter config a run saved (its config.yaml, as the trainer read it)."""
    saved = OmegaConf.load(run / "config.yaml")
    assert isinstance(saved, DictConfig)
    adapter = load_run_config(saved).adapter
    assert adapter is not None
    return adapter
