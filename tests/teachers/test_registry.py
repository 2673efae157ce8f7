"""Every registered teacher, tiny and offline: spec, determinism, input handling, frozen state."""

from __future__ import annotations

import pytest
import torch

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers import Teacher, get_entry, load_teacher, teacher_names

NAMES = teacher_names()
DECODER_KINDS = {None, "pca", "masks", "depth", "pixels"}


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[Teacher, TeacherOutput]]:
    """Cache: teacher name -> (tiny teacher, its output on the shared images), filled on first use."""
    return {}


def tiny_with_output(
    name: str, images: torch.Tensor, built: dict[str, tuple[Teacher, TeacherOutput]]
) -> tuple[Teacher, TeacherOutput]:
    if name not in built:
        teacher = load_teacher(name, source="tiny")
        built[name] = (teacher, teacher(images))
    return built[name]


def test_the_expected_families_are_registered() -> None:
    assert {"clip", "clip_hf", "dinov2", "dinov3", "mae", "siglip2"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_entry_declares_weights_and_decoder(name: str) -> None:
    entry = get_entry(name)
    assert entry.name == name
    assert entry.default_weights.strip() == entry.default_weights and entry.default_weights
    assert entry.decoder in DECODER_KINDS


@pytest.mark.parametrize("name", NAMES)
def test_tiny_output_matches_its_spec(
    name: str, images: torch.Tensor, built: dict[str, tuple[Teacher, TeacherOutput]]
) -> None:
    teacher, out = tiny_with_output(name, images, built)
    spec = teacher.spec
    assert spec.name == name
    assert TeacherSpec.from_dict(spec.to_dict()) == spec
    assert len(spec.mean) == 3 and len(spec.std) == 3 and min(spec.std) > 0
    assert out.patch.shape == (images.shape[0], *spec.grid, spec.channels)
    assert out.patch.dtype == torch.float32 and torch.isfinite(out.patch).all()
    if spec.cls_channels is None:
        assert out.cls is None
    else:
        assert out.cls is not None and out.cls.shape == (images.shape[0], spec.cls_channels)
        assert out.cls.dtype == torch.float32 and torch.isfinite(out.cls).all()
    # Different images must give different features (a constant output would pass every shape check).
    assert not torch.allclose(out.patch[0], out.patch[1])


@pytest.mark.parametrize("name", NAMES)
def test_two_tiny_builds_give_identical_outputs(
    name: str, images: torch.Tensor, built: dict[str, tuple[Teacher, TeacherOutput]]
) -> None:
    _, first = tiny_with_output(name, images, built)
    second = load_teacher(name, source="tiny")(images)
    assert torch.equal(first.patch, second.patch)
    assert (first.cls is None) == (second.cls is None)
    if first.cls is not None and second.cls is not None:
        assert torch.equal(first.cls, second.cls)


@pytest.mark.parametrize("name", NAMES)
def test_building_a_tiny_teacher_leaves_the_global_rng_alone(name: str) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    load_teacher(name, source="tiny")
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("name", NAMES)
def test_uint8_and_unit_float_images_give_the_same_features(
    name: str, images: torch.Tensor, built: dict[str, tuple[Teacher, TeacherOutput]]
) -> None:
    teacher, from_uint8 = tiny_with_output(name, images, built)
    from_float = teacher(images.float() / 255.0)
    torch.testing.assert_close(from_float.patch, from_uint8.patch, atol=1e-5, rtol=1e-5)
    if from_uint8.cls is not None:
        assert from_float.cls is not None
        torch.testing.assert_close(from_float.cls, from_uint8.cls, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_samples_do_not_leak_across_the_batch(
    name: str, images: torch.Tensor, built: dict[str, tuple[Teacher, TeacherOutput]]
) -> None:
    teacher, batched = tiny_with_output(name, images, built)
    single = teacher(images[1:2])
    torch.testing.assert_close(single.patch[0], batched.patch[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_teachers_are_frozen_and_in_eval_mode(
    name: str, images: torch.Tensor, built: dict[str, tuple[Teacher, TeacherOutput]]
) -> None:
    teacher, out = tiny_with_output(name, images, built)
    params = list(teacher.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not any(module.training for module in teacher.modules())
    assert not out.patch.requires_grad


BAD_BATCHES = {
    "no batch dim": (torch.zeros(3, 32, 32, dtype=torch.uint8), r"\(3, 32, 32\)"),
    "one channel": (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), r"\(2, 1, 32, 32\)"),
    "channels last": (torch.zeros(2, 32, 32, 3, dtype=torch.uint8), r"\(2, 32, 32, 3\)"),
    "int64": (torch.zeros(2, 3, 32, 32, dtype=torch.int64), "torch.int64"),
}


@pytest.mark.parametrize("bad", list(BAD_BATCHES))
@pytest.mark.parametrize("name", NAMES)
def test_bad_batches_are_refused_with_the_shape_or_dtype(
    name: str, bad: str, images: torch.Tensor, built: dict[str, tuple[Teacher, TeacherOutput]]
) -> None:
    teacher, _ = tiny_with_output(name, images, built)
    batch, pattern = BAD_BATCHES[bad]
    with pytest.raises(ValueError, match=pattern):
        teacher(batch)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_source_refuses_weights(name: str) -> None:
    with pytest.raises(ValueError, match="source='tiny'"):
        load_teacher(name, source="tiny", weights="some/model")


def test_importing_the_package_leaves_the_heavy_families_unloaded() -> None:
    """Loaders, stats and every torchrun worker import distill.teachers; the families load on first lookup."""
    import subprocess
    import sys

    code = (
        "import sys, distill.teachers, distill.stats;"
        "heavy = [m for m in ('open_clip', 'segment_anything', 'distill.teachers.sam') if m in sys.modules];"
        "assert not heavy, heavy;"
        "from distill.teachers import teacher_names;"
        "assert {'clip', 'sam', 'depth_anything'} <= set(teacher_names());"
        "assert 'segment_anything' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
