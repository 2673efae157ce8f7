"""Zero loss weights under DDP: every teacher weight and loss term set to 0, alone or several.

A zero-weight term is left out of the loss graph, so its head gets no gradient. DDP waits for a
gradient of every parameter it holds (``find_unused_parameters`` does not help: it searches from the
forward outputs, which still hold that head's prediction) and fails at the second step with
"Expected to have finished reduction in the prior iteration". The trainer freezes exactly the
parameters the loss cannot reach (``distill.train.reach``) before wrapping the model.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from train_helpers import TinyData, data_overrides, run_train

from distill.features import TeacherOutput, TeacherSpec
from distill.losses import LossConfig, distillation_loss
from distill.models import Student, StudentConfig
from distill.train.reach import freeze_unreachable, unreachable_parameters
from distill.train.setup import check_something_trains
from distill.train.typed import ConfigError

SIZE = 32
TEACHERS = {  # with and without a CLS, grids bigger and smaller than the student's 4x4
    "dinov2": TeacherSpec("dinov2", 28, (0.5,) * 3, (0.25,) * 3, (4, 4), 12, 10),
    "sam": TeacherSpec("sam", 64, (0.5,) * 3, (0.25,) * 3, (8, 8), 6, None),
    "mae": TeacherSpec("mae", 28, (0.5,) * 3, (0.25,) * 3, (2, 2), 8, 8),
}
ZEROABLE = ("dinov2", "sam", "mae", "patch_cos", "patch_l1", "cls_cos", "pixel_mse")


def loss_with_zeros(zeros: tuple[str, ...]) -> LossConfig:
    terms = {k: 0.0 for k in zeros if k in ("patch_cos", "patch_l1", "cls_cos", "pixel_mse")}
    return LossConfig(**terms, teacher_weights={t: 0.0 for t in zeros if t in TEACHERS})


def all_zero_sets() -> list[tuple[str, ...]]:
    """The weights set to 0 alone, in pairs, all but one, and all at once."""
    sizes = (1, 2, len(ZEROABLE) - 1, len(ZEROABLE))
    return [c for n in sizes for c in itertools.combinations(ZEROABLE, n)]


def make_student(bottleneck: str = "cls") -> Student:
    torch.manual_seed(0)
    teachers = dict(TEACHERS)
    if bottleneck == "none":  # no teacher with a CLS: nothing reads z
        teachers = {"sam": TEACHERS["sam"]}
    config = StudentConfig.from_preset("tiny", teachers, image_size=SIZE, bottleneck=bottleneck)
    return Student(config, load_pretrained=False)


def batch(student: Student, seed: int) -> tuple[torch.Tensor, dict[str, TeacherOutput]]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    targets = {}
    for name, spec in student.config.teachers.items():
        cls = None if spec.cls_channels is None else torch.randn(2, spec.cls_channels, generator=gen)
        targets[name] = TeacherOutput(torch.randn(2, *spec.grid, spec.channels, generator=gen), cls)
    return images, targets


def trainable(loss: LossConfig, student: Student) -> bool:
    try:
        check_something_trains(loss, student.config)
    except ConfigError:
        return False
    return True


def test_frozen_set_is_exactly_what_gets_no_gradient() -> None:
    """One process: after freezing, every trainable parameter gets a gradient, for every zero set;
    'nothing trains' is refused up front exactly when the loss has no term left."""
    student = make_student()
    images, targets = batch(student, 0)
    for zeros in all_zero_sets():
        loss = loss_with_zeros(zeros)
        for p in student.parameters():
            p.requires_grad_(True)
        if not trainable(loss, student):
            with pytest.raises(ValueError, match="nothing to train"):
                distillation_loss(student(images), targets, images, loss)
            continue
        frozen = set(freeze_unreachable(student, loss))
        student.zero_grad(set_to_none=True)
        distillation_loss(student(images), targets, images, loss).total.backward()
        for name, p in student.named_parameters():
            assert (name in frozen) == (p.grad is None), (zeros, name)
        for teacher in TEACHERS:  # a zero-weight teacher's head is frozen whole
            if teacher in zeros:
                assert {
                    n for n, _ in student.heads[teacher].named_parameters(prefix=f"heads.{teacher}")
                } <= frozen
    # nothing frozen at full weights; bottleneck=none without a CLS teacher freezes the z projection
    assert unreachable_parameters(make_student(), LossConfig()) == []
    assert {n.split(".")[0] for n in unreachable_parameters(make_student("none"), LossConfig())} == {"to_z"}


def test_the_assignment_fading_to_zero_leaves_what_the_loss_reaches_unchanged() -> None:
    """The trainer freezes once, at the start weights; under DDP the set of parameters that get gradients
    must not shrink when the sprites' assignment fades to 0 mid-run (sprite_assign_fade_steps)."""
    torch.manual_seed(0)
    config = StudentConfig.from_preset(
        "tiny", TEACHERS, image_size=SIZE, pixel_head=True, z_keypoints=2, keypoint_sprites=True
    )
    student = Student(config, load_pretrained=False)
    start = LossConfig(sprite_assign=0.1, sprite_assign_fade_steps=10)
    assert start.at_step(10).sprite_assign == 0.0
    for search in (1.0, 0.0):
        faded = LossConfig(sprite_search=search, sprite_assign=0.0)
        assert unreachable_parameters(student, faded) == unreachable_parameters(
            student, LossConfig(sprite_search=search, sprite_assign=0.1)
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, cases: list[tuple[str, tuple[str, ...]]], out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    try:
        for bottleneck, zeros in cases:
            student = make_student(bottleneck)
            loss = loss_with_zeros(zeros)
            optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
            frozen = freeze_unreachable(student, loss)
            model = DistributedDataParallel(student, find_unused_parameters=False)
            for step in range(3):  # the crash came at the second step
                images, targets = batch(student, 100 * step + rank)
                distillation_loss(model(images), targets, images, loss).total.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            flat = torch.cat([p.detach().flatten() for p in student.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            results.append(
                {"zeros": list(zeros), "frozen": len(frozen), "same": bool(gathered[0].equal(gathered[1]))}
            )
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def test_every_zero_set_trains_under_ddp_with_two_gloo_ranks(tmp_path: Path) -> None:
    student = make_student()
    cases = [("cls", z) for z in all_zero_sets() if trainable(loss_with_zeros(z), student)]
    cases += [("none", ()), ("none", ("patch_cos",)), ("none", ("pixel_mse",))]
    assert len(cases) > 30
    mp.spawn(_ddp_worker, args=(2, _free_port(), cases, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(results) == len(cases)
        assert all(r["same"] for r in results), [r for r in results if not r["same"]]


def test_the_issue_command_trains_under_torchrun(tiny_data: TinyData, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 scripts/train_rvfm.py ... teachers=dinov2 teachers.dinov2.weight=0``
    (the pixel loss alone trains), and several zeros at once with an online teacher."""
    common = [
        *data_overrides(tiny_data),
        "training.steps=3",
        "training.batch_size=2",
        f"output_dir={tmp_path}",
    ]
    common += ["dataset.num_workers=0", "training.val_every=0", "training.checkpoint_every=2"]
    result = run_train([*common, "teachers=dinov2", "teachers.dinov2.weight=0", "run_name=one"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "frozen: heads.dinov2.spatial" in result.stderr
    several = [
        "teachers=cdm",
        "teachers.clip.online=true",
        "teachers.mae.weight=0",
        "training.loss.cls_cos=0",
    ]
    several += ["training.loss.pixel_mse=0", "training.online_stats_steps=1", "run_name=several"]
    result = run_train([*common, *several], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    nothing = ["teachers=dinov2", "teachers.dinov2.weight=0", "training.loss.pixel_mse=0", "run_name=none"]
    result = run_train([*common, *nothing, "training.batch_size=4"])
    assert result.returncode == 2 and "every loss term is weighted 0" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "none").exists()
