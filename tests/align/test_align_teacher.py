"""adapter.encoder=teacher: a copy of tiny DINOv2 under LoRA, aligned to the frozen DINOv2's target features.

Only the adapters move (every other tensor bit-identical), merged equals unmerged, the merged folder loads
strictly through load_teacher's local-weights path, resume is exact, and the planted inversion is aligned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from align_helpers import Paired, TrainFn
from safetensors.torch import load_file, save_file

from distill.stats import FeatureStats
from distill.teachers import load_teacher
from distill.train.adapter import AdapterConfig, LoraAdapter
from distill.train.teacher_source import TeacherEncoder
from distill.train.typed import ConfigError

CONFIG = AdapterConfig(rank=4, alpha=8, target_modules=("q_proj", "v_proj"), encoder="teacher")
TEACHER = ("adapter.encoder=teacher",)
RUN = AdapterConfig(rank=4, alpha=16, target_modules=("q_proj", "v_proj"), encoder="teacher")  # train_align's


def _encoder() -> TeacherEncoder:
    encoder = TeacherEncoder(load_teacher("dinov2", "tiny", device="cpu"), image_size=32)
    spec = encoder.teacher.spec
    assert spec.cls_channels is not None
    gen = torch.Generator().manual_seed(2)
    c, k = spec.channels, spec.cls_channels
    mean, cls_mean = torch.randn(c, generator=gen), torch.randn(k, generator=gen)
    std, cls_std = torch.rand(c, generator=gen) + 0.5, torch.rand(k, generator=gen) + 0.5
    encoder.set_stats({"dinov2": FeatureStats("dinov2", mean, std, cls_mean, cls_std, 1)})
    return encoder


def _images() -> torch.Tensor:
    return torch.randint(
        0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )


def test_teacher_encoder_is_the_teacher_normalised_and_lora_starts_as_a_no_op() -> None:
    encoder = _encoder()
    images = _images()
    frozen = load_teacher("dinov2", "tiny", device="cpu")
    expected = encoder.stats["dinov2"].normalize(frozen(images))
    before = encoder(images).features["dinov2"]
    torch.testing.assert_close(before.patch, expected.patch)
    assert before.cls is not None and expected.cls is not None
    torch.testing.assert_close(before.cls, expected.cls)

    adapter = LoraAdapter(encoder, CONFIG)
    trainable = adapter.trainable()
    layers = 2  # the tiny DINOv2
    assert len(trainable) == 2 * 2 * layers and all(".lora_" in n for n in trainable)
    assert all(
        n.startswith("teacher.model.encoder.") and (".q_proj." in n or ".v_proj." in n) for n in trainable
    )
    assert torch.equal(encoder(images).features["dinov2"].patch, before.patch)  # B = 0

    with pytest.raises(ConfigError, match=r"match no layer of the teacher's teacher\.model.*q_proj"):
        LoraAdapter(_encoder(), AdapterConfig(4, 8, ("query",), encoder="teacher"))


def test_merged_teacher_equals_unmerged_and_loads_strictly_as_local_weights(tmp_path: Path) -> None:
    encoder = _encoder()
    adapter = LoraAdapter(encoder, CONFIG)
    with torch.no_grad():
        for param in encoder.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    images = _images()
    with torch.no_grad():
        unmerged = encoder(images).features["dinov2"]
        merged = adapter.merged()
        out = merged(images).features["dinov2"]
    torch.testing.assert_close(out.patch, unmerged.patch, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmerged.patch, _encoder()(images).features["dinov2"].patch, atol=1e-3)
    assert not any(".lora_" in n or "base_layer" in n for n in merged.state_dict())

    merged.save_pretrained(tmp_path / "aligned", encoder.stats)
    assert sorted(p.name for p in (tmp_path / "aligned").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "stats",
    ]
    loaded = load_teacher("dinov2", "hub", str(tmp_path / "aligned"), device="cpu")
    assert loaded.spec == merged.teacher.spec
    raw = loaded(images)
    torch.testing.assert_close(merged.stats["dinov2"].normalize(raw).patch, out.patch, rtol=1e-5, atol=1e-5)

    # strict: a folder missing one tensor, or holding an extra one, is refused naming it
    weights = tmp_path / "aligned" / "model.safetensors"
    tensors = load_file(str(weights))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(weights))
    with pytest.raises(ValueError, match="strict loading"):
        load_teacher("dinov2", "hub", str(tmp_path / "aligned"), device="cpu")
    save_file(tensors | {"encoder.extra.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(ValueError, match="strict loading"):
        load_teacher("dinov2", "hub", str(tmp_path / "aligned"), device="cpu")


def test_teacher_alignment_moves_only_adapters_loads_strictly_and_resumes_exactly(
    paired: Paired, train_align: TrainFn, tmp_path: Path
) -> None:
    stats = f"dataset.stats_dir={paired.stats}"
    run = train_align(tmp_path, "aligned", *TEACHER, stats)
    aligned = load_teacher("dinov2", "hub", str(run / "student"), device="cpu")  # strict
    frozen = load_teacher("dinov2", "tiny", device="cpu").state_dict()
    merged = aligned.state_dict()
    assert merged.keys() == frozen.keys()
    changed = {k for k in frozen if not torch.equal(frozen[k], merged[k])}
    adapted = {k for k in frozen if k.endswith(("q_proj.weight", "v_proj.weight"))}
    assert adapted and changed == adapted  # every other tensor is bit-identical
    copy = TeacherEncoder(load_teacher("dinov2", "tiny", device="cpu"), image_size=32)
    copy.set_stats({"dinov2": FeatureStats.load(paired.stats / "dinov2.safetensors")})
    adapter = LoraAdapter(copy, RUN)
    adapter.load(run / "adapter")  # the adapter folder on a fresh copy reproduces the merged teacher
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(
            copy.stats["dinov2"].normalize(aligned(images)).patch,
            copy(images).features["dinov2"].patch,
            rtol=1e-4,
            atol=1e-4,
        )

    train_align(tmp_path, "resumed", *TEACHER, stats, f"resume={run / 'checkpoints' / 'step_00000002'}")
    resumed = load_teacher("dinov2", "hub", str(tmp_path / "resumed" / "student"), device="cpu").state_dict()
    assert all(torch.equal(v, merged[k]) for k, v in resumed.items()), (
        "a resumed alignment left the trajectory"
    )

    with pytest.raises(AssertionError, match=r"init_from: adapter\.encoder=teacher adapts a copy"):
        train_align(tmp_path, "refused", *TEACHER, stats, f"init_from={paired.init}")


def test_teacher_alignment_undoes_a_planted_colour_inversion(
    paired: Paired, train_align: TrainFn, tmp_path: Path
) -> None:
    run = train_align(
        tmp_path,
        "inversion",
        *TEACHER,
        f"dataset.stats_dir={paired.stats}",
        "training.batch_size=8",
        "training.steps=60",
        "training.val_every=60",
        "training.checkpoint_every=60",
    )
    lines = (run / "metrics.jsonl").read_text().splitlines()
    before, after = [r for r in map(json.loads, lines) if r["kind"] == "val"]
    assert (before["step"], after["step"]) == (0, 60)
    assert before["dinov2/cos"] < -0.5 and before["dinov2/cls_cos"] < -0.5  # the copy sees inverted scenes
    assert after["dinov2/cos"] > before["dinov2/cos"] + 0.5
    assert after["dinov2/cls_cos"] > before["dinov2/cls_cos"] + 0.9
