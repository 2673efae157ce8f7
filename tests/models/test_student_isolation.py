"""The CLS bottleneck: with bottleneck='cls' every output is a function of z alone.

Each check has a negative control on bottleneck='none' (heads read patch tokens), which must fail
the same check: that shows the check can see leakage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from student_fixtures import images, make_student
from torch import nn

from distill.models import Student, StudentOutput

RESOLUTIONS = [(64, 64), (96, 64), (32, 48)]  # training size, bigger and smaller non-square grids


def flat_outputs(out: StudentOutput) -> dict[str, torch.Tensor]:
    """Every prediction except z, by name."""
    named = {f"{name}/patch": feats.patch for name, feats in out.features.items()}
    named |= {f"{name}/cls": feats.cls for name, feats in out.features.items() if feats.cls is not None}
    if out.pixels is not None:
        named["pixels"] = out.pixels
    return named


@contextmanager
def swapped_cls(student: Student) -> Iterator[None]:
    """Swap the CLS token (position 0 of the backbone's last hidden state) between images 0 and 1,
    leaving every patch token where it was."""

    def hook(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, 0] = output[[1, 0], 0]
        return output

    handle = student.backbone.layernorm.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("head", ["mlp", "conv"])
@pytest.mark.parametrize("size", RESOLUTIONS)
def test_swapping_only_the_cls_swaps_every_output(head: str, size: tuple[int, int]) -> None:
    student = make_student(head=head)
    batch = images(2, size)
    with torch.no_grad():
        clean = flat_outputs(student(batch))
        with swapped_cls(student):
            hybrid = flat_outputs(student(batch))
    # Image 0 now has image 1's CLS and its own patch tokens: its outputs must be image 1's.
    for name in clean:
        torch.testing.assert_close(hybrid[name][0], clean[name][1], rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(hybrid[name][1], clean[name][0], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("head", ["mlp", "conv"])
def test_negative_control_patch_tokens_leak_without_the_bottleneck(head: str) -> None:
    student = make_student(head=head, bottleneck="none")
    batch = images(2)
    with torch.no_grad():
        clean = flat_outputs(student(batch))
        with swapped_cls(student):
            hybrid = flat_outputs(student(batch))
    spatial = [name for name in clean if name.endswith("/patch") or name == "pixels"]
    assert spatial
    for name in spatial:
        assert not torch.allclose(hybrid[name][0], clean[name][1], atol=1e-3), (
            f"{name} did not see its patch tokens"
        )
    # The summary heads read z in both modes, so they do follow the CLS.
    torch.testing.assert_close(hybrid["dinov2/cls"][0], clean["dinov2/cls"][1])


@pytest.mark.parametrize(("keypoints", "sprites"), [(0, False), (3, False), (3, True)])
@pytest.mark.parametrize("size", RESOLUTIONS)
def test_predict_on_swapped_z_equals_forward_on_swapped_images(
    size: tuple[int, int], keypoints: int, sprites: bool
) -> None:
    """With keypoints z also reads the patch tokens (and sprites draw them on the pixels), and every
    output is still a function of z alone."""
    student = make_student(z_keypoints=keypoints, keypoint_sprites=sprites)
    batch = images(3, size)
    with torch.no_grad():
        z = student.encode(batch)
        order = torch.tensor([2, 0, 1])
        from_z = flat_outputs(student.predict(z[order], image_size=size))
        from_images = flat_outputs(student(batch[order]))
    for name, value in from_images.items():
        torch.testing.assert_close(from_z[name], value, rtol=1e-5, atol=1e-5, msg=name)


def _patch_token_gradient(student: Student, batch: torch.Tensor) -> torch.Tensor:
    """d(random projection of every output) / d(backbone last hidden state), [B, 1 + h*w, width]."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
        output.retain_grad()
        captured.append(output)

    handle = student.backbone.layernorm.register_forward_hook(hook)
    try:
        outputs = flat_outputs(student(batch))
    finally:
        handle.remove()
    gen = torch.Generator().manual_seed(0)
    loss = sum((value * torch.randn(value.shape, generator=gen)).sum() for value in outputs.values())
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    (hidden,) = captured
    assert hidden.grad is not None
    return hidden.grad


@pytest.mark.parametrize("head", ["mlp", "conv"])
@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_patch_tokens_get_exactly_zero_gradient_through_the_bottleneck(
    head: str, size: tuple[int, int]
) -> None:
    grad = _patch_token_gradient(make_student(head=head), images(2, size))
    assert torch.count_nonzero(grad[:, 1:]) == 0
    assert (grad[:, 0].abs().sum(-1) > 0).all()  # the CLS carries everything


def test_negative_control_patch_tokens_get_gradient_without_the_bottleneck() -> None:
    grad = _patch_token_gradient(make_student(bottleneck="none"), images(2))
    assert (grad[:, 1:].abs().sum(-1) > 0).all()  # every patch token feeds some output
