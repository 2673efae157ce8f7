"""Checkpoint folder: save -> load gives identical outputs; anything that does not match is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from student_fixtures import (
    TEACHERS,
    assert_same_output,
    images,
    make_stats,
    make_student,
    save_deit_like,
)

from distill.models import Student
from distill.stats import FeatureStats


@pytest.mark.parametrize(("bottleneck", "head"), [("cls", "mlp"), ("cls", "conv"), ("none", "mlp")])
def test_save_load_gives_identical_outputs(tmp_path: Path, bottleneck: str, head: str) -> None:
    student = make_student(bottleneck=bottleneck, head=head)
    stats = make_stats(student.config)
    student.save_pretrained(tmp_path / "ckpt", stats)
    assert sorted(p.relative_to(tmp_path / "ckpt").as_posix() for p in (tmp_path / "ckpt").rglob("*")) == [
        "config.json",
        "model.safetensors",
        "stats",
        *sorted(f"stats/{name}.safetensors" for name in TEACHERS),
    ]
    loaded = Student.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == student.config
    batch = images(2)
    with torch.no_grad():
        assert_same_output(loaded(batch), student(batch), atol=0.0)
    assert loaded.stats is not None
    for name, teacher_stats in stats.items():
        assert torch.equal(loaded.stats[name].patch_std, teacher_stats.patch_std)
    config_json = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config_json["config"]["teachers"]["sam"]["grid"] == [16, 16]


def test_loading_does_not_need_the_pretrained_source(tmp_path: Path) -> None:
    save_deit_like(tmp_path / "deit")
    student = make_student(pretrained=str(tmp_path / "deit"))
    student.save_pretrained(tmp_path / "ckpt", make_stats(student.config))
    (tmp_path / "deit" / "model.safetensors").unlink()
    loaded = Student.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.pretrained == str(tmp_path / "deit")
    assert torch.equal(loaded.backbone.layernorm.weight, student.backbone.layernorm.weight)


def test_saving_again_replaces_the_checkpoint_and_leaves_no_temporaries(tmp_path: Path) -> None:
    first, second = make_student(seed=0), make_student(seed=1)
    first.save_pretrained(tmp_path / "ckpt", make_stats(first.config))
    second.save_pretrained(tmp_path / "ckpt", make_stats(second.config))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    loaded = Student.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.to_z.linear.weight, second.to_z.linear.weight)


def test_saving_over_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    student = make_student()
    with pytest.raises(FileExistsError, match="not a student checkpoint"):
        student.save_pretrained(tmp_path / "run", make_stats(student.config))
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(FileExistsError, match="not a student checkpoint"):
        student.save_pretrained(tmp_path / "hf", make_stats(student.config))
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == {"model_type": "vit"}


def test_saving_with_incomplete_stats_is_refused(tmp_path: Path) -> None:
    student = make_student()
    stats = make_stats(student.config)
    del stats["odd"]
    with pytest.raises(ValueError, match=r"missing \['odd'\]"):
        student.save_pretrained(tmp_path / "ckpt", stats)
    assert not (tmp_path / "ckpt").exists()


def _saved(tmp_path: Path) -> Path:
    student = make_student()
    student.save_pretrained(tmp_path / "ckpt", make_stats(student.config))
    return tmp_path / "ckpt"


def _edit_weights(folder: Path, name: str, value: torch.Tensor | None) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("heads.sam.spatial.out.weight", None, r"missing tensors: heads\.sam\.spatial\.out\.weight"),
        ("heads.extra.weight", torch.zeros(3), r"unexpected tensors: heads\.extra\.weight"),
        (
            "decoder.queries",
            torch.zeros(1, 9, 48),
            r"wrong shapes: decoder\.queries \(file \(1, 9, 48\), model \(1, 16, 48\)\)",
        ),
    ],
)
def test_a_mismatching_tensor_is_refused_naming_it_and_the_file(
    tmp_path: Path, name: str, value: torch.Tensor | None, message: str
) -> None:
    folder = _saved(tmp_path)
    _edit_weights(folder, name, value)
    with pytest.raises(ValueError, match=message) as info:
        Student.from_pretrained(folder)
    assert "model.safetensors" in str(info.value)


def test_stats_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    FeatureStats("sam", torch.zeros(9), torch.ones(9), None, None, 10).save(
        folder / "stats" / "sam.safetensors"
    )
    with pytest.raises(ValueError, match="teacher 'sam' has 8"):
        Student.from_pretrained(folder)


def test_missing_and_extra_stats_files_are_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    (folder / "stats" / "mae.safetensors").rename(folder / "stats" / "clip.safetensors")
    with pytest.raises(ValueError, match=r"holds stats for \['clip'\]"):
        Student.from_pretrained(folder)
    (folder / "stats" / "clip.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"mae\.safetensors"):
        Student.from_pretrained(folder)


def test_a_config_from_elsewhere_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 48}))
    with pytest.raises(ValueError, match="not a distill student config"):
        Student.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        Student.from_pretrained(tmp_path / "nowhere")
