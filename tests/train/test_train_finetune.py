"""preset=finetune starts from a trained student folder and trains on another dataset, in its normalisation space."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from train_helpers import ReferenceRun, TinyData, data_overrides, metric_records, run_train

from distill.models import Student
from distill.stats import FeatureStats


def test_finetune_starts_from_the_checkpoint_on_a_domain_dataset(
    reference_run: ReferenceRun, tiny_data: TinyData, tmp_path: Path
) -> None:
    init = reference_run.run_dir / "student"
    overrides = [
        *data_overrides(tiny_data, "domain", streams=2),
        "preset=finetune",
        f"init_from={init}",
        "teachers=cdm",
        "teachers.clip.online=true",
        "training.steps=2",
        "training.batch_size=4",
        "training.weight_decay=0",
        "training.val_every=0",
        "logging.log_every=1",
        "dataset.num_workers=0",
        "logging.wandb.mode=offline",  # the config wins over WANDB_MODE=disabled in the environment
        f"output_dir={tmp_path}",
        "run_name=ft",
    ]
    result = run_train(overrides)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "ft"
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.init_from == str(init) and saved.training.lr == 1e-4 and saved.dataset.name == "domain"
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), "no offline wandb run in the run dir"

    # Adam moves each weight by at most ~lr per step, so after 2 steps the finetuned weights are the
    # checkpoint's up to the summed lr; a fresh initialisation would be orders of magnitude away.
    records = metric_records(run)
    budget = sum(r["lr"] for r in records if r["kind"] == "train") * 1.01
    assert budget < 1e-5
    start, tuned = (
        load_file(str(init / "model.safetensors")),
        load_file(str(run / "student" / "model.safetensors")),
    )
    # z batch-norm running statistics are recomputed for the new data before saving: not weights
    weights = [k for k in start if not k.startswith("to_z.z_norm.running_")]
    # Weights near 1 (sine-cosine position tables, the canvas) are stored to float32's spacing there.
    excess = [
        float((tuned[k] - start[k]).abs().max())
        - budget
        - 2 * torch.finfo(torch.float32).eps * float(start[k].abs().max())
        for k in weights
    ]
    moved = max(float((tuned[k] - start[k]).abs().max()) for k in weights)
    assert moved > 0 and max(excess) <= 0, (moved, budget, max(excess))
    fresh = Student(Student.from_pretrained(init).config, load_pretrained=False).state_dict()
    assert max(float((fresh[k] - start[k]).abs().max()) for k in start) > 100 * budget

    # the finetuned student keeps the init student's normalisation space (its stats), not the domain
    # dataset's: its heads were trained to predict in that space (test_train_guards checks step 0)
    tuned_stats = Student.from_pretrained(run / "student").stats
    base_stats = Student.from_pretrained(init).stats
    assert tuned_stats is not None and base_stats is not None
    domain = FeatureStats.load(tiny_data.stats["domain"] / "dinov2.safetensors")
    for name in ("clip", "dinov2", "mae"):
        assert tuned_stats[name].patch_mean.equal(base_stats[name].patch_mean), name
    assert not tuned_stats["dinov2"].patch_mean.equal(domain.patch_mean)
