"""benchmarks/roofline.py: the step's counted FLOPs and bytes per operator, and the floor they set."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def roofline(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return importlib.import_module("roofline")


def test_each_operator_counts_what_its_kernel_reads_and_writes(roofline: ModuleType) -> None:
    """Views and allocations run no kernel; an in-place operator reads and writes its self; ``copy_``
    and an ``out=`` destination are only written; attention's FLOPs count on a CPU too."""
    from torch.utils.module_tracker import ModuleTracker

    x, w = torch.randn(8, 16), torch.randn(4, 16)
    q = torch.randn(2, 3, 10, 8)
    with ModuleTracker() as tracker, roofline.CostCounter(tracker) as counter:
        counter.part = "test"
        y = F.linear(x, w)  # reads 8x16 + 4x16 floats, writes 8x4; 2 * 8 * 16 * 4 FLOPs
        y.t()[1:].unsqueeze(0)  # views: nothing
        torch.empty(5)  # an allocation: nothing
        y.add_(1.0)  # reads and writes y
        torch.empty(8, 4).copy_(y)  # reads y, writes the destination
        torch.mul(y, 2.0, out=torch.empty(8, 4))  # reads y, writes out
        F.scaled_dot_product_attention(q, q, q)
    got = [(op.op, op.flops, op.bytes) for op in counter.ops]
    assert got[:4] == [
        ("mm", 2 * 8 * 16 * 4, 4 * (8 * 16 + 4 * 16 + 8 * 4)),
        ("add_", 0, 4 * 2 * 32),
        ("copy_", 0, 4 * 2 * 32),
        ("mul", 0, 4 * 2 * 32),
    ]
    (attention,) = [op for op in counter.ops[4:] if "attention" in op.op]
    assert attention.flops == 2 * (2 * 2 * 3 * 10 * 10 * 8)  # two products of [10, 8] x [8, 10] per head


def test_counts_are_extrapolated_exactly_from_two_batches(roofline: ModuleType) -> None:
    """Every operator's FLOPs and bytes are linear in the batch: counts at 2 and 4 give those at 3."""
    specs = roofline.tiny_specs()
    at_three, _ = roofline.measure_size("tiny", specs, 64, (2, 3), 3)
    extrapolated, parameters = roofline.measure_size("tiny", specs, 64, (2, 4), 3)
    assert [(o.part, o.op) for o in extrapolated] == [(o.part, o.op) for o in at_three]
    for got, want in zip(extrapolated, at_three, strict=True):
        assert got.flops == pytest.approx(want.flops) and got.bytes == pytest.approx(want.bytes)
    parts = {op.part for op in extrapolated}
    assert {"loss forward", "loss backward", "student backward", "student forward: backbone"} <= parts
    assert {f"student forward: heads.{name}" for name in specs} <= parts
    assert parameters > 0


def test_the_patch_terms_move_at_most_60_bytes_per_value(roofline: ModuleType) -> None:
    """One teacher's patch terms, forward and backward, bf16 prediction and float32 target: the
    hand-derived gradient of distill.losses.patch_terms moves ~56 bytes per value between its
    operators (smooth L1's sum also makes a float32 temporary inside its kernel, which no count of
    inputs and outputs sees), autograd's composition of cosine_similarity and smooth_l1_loss ~180."""
    from torch.utils.module_tracker import ModuleTracker

    from distill.losses import patch_terms

    def reference(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = pred.float()
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean(), F.smooth_l1_loss(pred, target)

    target = torch.randn(4, 16, 16, 256)
    moved = {}
    for name, terms in (("ours", lambda p, t: patch_terms(p, t, 1.0)), ("autograd", reference)):
        pred = torch.randn(4, 16, 16, 256).bfloat16().requires_grad_(True)
        with ModuleTracker() as tracker, roofline.CostCounter(tracker) as counter:
            cosine, smooth_l1 = terms(pred, target)
            (cosine + smooth_l1).backward()
        moved[name] = sum(op.bytes for op in counter.ops) / target.numel()
    assert 40 < moved["ours"] <= 60 and moved["autograd"] > 150


def test_the_floor_bounds_compute_and_names_its_parts(roofline: ModuleType, tmp_path: Path) -> None:
    output = tmp_path / "roofline.json"
    assert roofline.main(["--smoke", "--batch", "8", "--device-name", "NVIDIA H100 80GB HBM3", "--output", str(output)]) == 0  # fmt: skip
    result = json.loads(output.read_text())
    assert result["device"] == {
        "name": "NVIDIA H100 80GB HBM3",
        "peak_bf16_tflops": 989.4,
        "bandwidth_tbs": 3.35,
    }
    row = result["sizes"]["tiny"]
    parts = row["parts"]
    assert row["floor_ms"] == pytest.approx(sum(p["floor_ms"] for p in parts.values()), abs=0.05)
    assert row["tflops_per_step"] == pytest.approx(sum(p["tflops"] for p in parts.values()), abs=2e-3)
    assert row["compute_only_ms"] <= row["floor_ms"]
    assert 0 < row["eager_mfu_ceiling"] <= 1
    assert parts["optimizer + clipping"]["gb_moved"] == pytest.approx(40 * row["parameters"] / 1e9, abs=0.01)
    floors = [op["floor_ms"] for op in row["top_ops"]]
    assert floors == sorted(floors, reverse=True)
    with pytest.raises(SystemExit):
        roofline.main(["--smoke", "--device-name", "an abacus", "--output", str(output)])
