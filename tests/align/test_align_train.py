"""preset=align through the real trainer: only adapters and chosen heads move, outputs load strictly, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from align_helpers import Paired, TrainFn
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from distill.distributed import DistContext
from distill.models import Student
from distill.train.adapter import AdapterConfig, LoraAdapter
from distill.train.config import load_run_config
from distill.train.setup import prepare_inputs
from distill.train.typed import ConfigError

SIZE = 32


STUDENT = ("adapter.train=[heads.dinov2]",)


def test_align_moves_only_adapters_and_chosen_heads_and_resumes_exactly(
    paired: Paired, train_align: TrainFn, tmp_path: Path
) -> None:
    init = paired.init
    run = train_align(tmp_path, "aligned", f"init_from={init}", *STUDENT)
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
    adapter = LoraAdapter(student, student_adapter_config(run))
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

    train_align(
        tmp_path, "resumed", f"init_from={init}", *STUDENT, f"resume={run / 'checkpoints' / 'step_00000002'}"
    )
    resumed = load_file(str(tmp_path / "resumed" / "student" / "model.safetensors"))
    assert all(torch.equal(resumed[k], merged[k]) for k in merged), "a resumed alignment left the trajectory"


def student_adapter_config(run: Path) -> AdapterConfig:
    """The adapter config a run saved (its config.yaml, as the trainer read it)."""
    saved = OmegaConf.load(run / "config.yaml")
    assert isinstance(saved, DictConfig)
    adapter = load_run_config(saved).adapter
    assert adapter is not None
    return adapter


def test_an_online_teacher_on_a_paired_dataset_is_refused(paired: Paired, tmp_path: Path) -> None:
    """It would see the source images the student reads, not the target side its stored features are of."""
    overrides = [
        f"dataset.root={paired.dataset.parent}",
        f"dataset.name={paired.dataset.name}",
        "teachers=dinov2",
        "teacher_source=tiny",
        "teachers.dinov2.online=true",
        "model=tiny",
        "device=cpu",
        f"output_dir={tmp_path}",
        "logging.wandb.mode=disabled",
    ]
    with initialize_config_module(config_module="distill.configs", version_base="1.3"):
        cfg = load_run_config(compose(config_name="config", overrides=overrides))
    manifest = paired.dataset / "manifest.json"
    with pytest.raises(ConfigError) as caught:
        prepare_inputs(cfg, DistContext())
    message = str(caught.value)
    assert (
        message.startswith("teachers.dinov2.online=true: ") and f"{manifest} is a paired dataset" in message
    )
    assert "extract dinov2 with distill-extract" in message and "teachers.dinov2.online=false" in message
