"""benchmarks/gpu.py --smoke: the GPU benchmark's code paths, at tiny sizes on CPU, so the script never rots."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIVE = ["clip", "dinov2", "mae", "sam", "depth_anything"]


def test_gpu_benchmark_smoke_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "gpu.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu.py"),
        "--smoke",
        "--peak-tflops",
        "0.5",
        "--bandwidth-tbs",
        "0.02",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([*command, "--output", str(output)], check=True, env=env, capture_output=True, timeout=600)
    result = json.loads(output.read_text())
    assert result["smoke"] is True and result["complete"] is True
    assert result["peak_bf16_tflops"] == 0.5 and result["bandwidth_tbs"] == 0.02
    plan = result["plan"]
    assert list(result["teachers"]) == FIVE

    extraction = result["extraction"]
    assert extraction["samples"] == plan["images"] and extraction["precision"] == "bf16"
    bare, pipe = extraction["timing"]["reference_seconds"], extraction["timing"]["candidate_seconds"]
    # the ratio and both medians are rounded in the JSON (a busy CPU runs the smoke at a ratio ~0.13-0.3)
    assert extraction["ratio"] == pytest.approx(bare["median"] / pipe["median"], rel=1e-2, abs=1e-3)
    for name in FIVE:
        cosine = extraction["bf16_vs_fp32_token_cosine"][name]
        assert 0.999 < cosine["mean"] <= 1.0 and cosine["min"] <= cosine["mean"]

    rows = result["training"]
    assert [(r["size"], r["compile"]) for r in rows] == [("tiny", False), ("tiny", True)]
    for row in rows:
        assert row["attention"] == "sdpa" and row["batch"] == plan["train_batch"]
        assert row["gflops_per_step"] > 0 and row["gflops_per_step"] == rows[0]["gflops_per_step"]
        step = row["step_s"]["median"]
        # images_per_s is rounded to 0.1 (a busy CPU runs the smoke step at ~1.5 images/s)
        assert row["images_per_s"] == pytest.approx(plan["train_batch"] / step, rel=1e-2, abs=0.05)
        assert row["mfu"] == pytest.approx(row["gflops_per_step"] / 1e3 / step / 0.5, rel=2e-2, abs=1e-3)
        assert row["over_eager_floor"] == pytest.approx(step * 1e3 / row["eager_floor_ms"], rel=2e-2)
        assert row["peak_gpu_memory_gb"] is None  # CPU
    assert "top_ops" not in rows[1]
    for ops in rows[0]["top_ops"].values():  # the uncompiled step's operators by self time, largest first
        assert 0 < len(ops) <= 12
        shares = [op["share"] for op in ops]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-3
        assert any(op["op"] in ("aten::mm", "aten::addmm") for op in ops)

    loader = result["loader"]
    assert loader["workers"] == plan["loader_workers"] and loader["global_batch"] == plan["train_batch"]
    assert loader["loader_over_memory"]["median"] > 0 and loader["samples_per_s_per_worker_core"] > 0
    # the cores figure uses the step this section feeds (uncompiled, the trainer's default), not the
    # training section's compiled one
    assert loader["step"].startswith(f"{plan['sizes'][0]}, uncompiled")
    assert 1 / loader["step_s"] == pytest.approx(loader["steps_per_s_memory"], rel=1e-3, abs=0.006)
    profile = loader["fed_step_top_ops"]  # where the fed step's time goes, on the GPU and the host threads
    assert sorted(profile) == ["device", "host"]
    for ops in profile.values():
        assert 0 < len(ops) <= 12 and all(op["ms_per_step"] >= 0 for op in ops)
    want = plan["train_batch"] / loader["step_s"] / loader["samples_per_s_per_worker_core"]
    assert loader["cores_to_feed_the_step"] == pytest.approx(want, rel=0.05, abs=0.05)


def test_a_failing_section_is_recorded_and_the_others_keep_their_figures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU run is scarce: one section's failure (say, a compiler error) must not lose the others."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    gpu = importlib.import_module("gpu")
    result: dict[str, object] = {"machine": {"device": "cuda"}, "peak_bf16_tflops": 989.4}
    assert gpu.run_section(result, "extraction", lambda: {"ratio": 0.97})
    assert not gpu.run_section(result, "training", lambda: 1 / 0)
    assert not gpu.run_section(result, "loader", lambda: {}["no stats"])
    assert result["extraction"] == {"ratio": 0.97}
    assert result["training"] == {"error": "ZeroDivisionError: division by zero"}
    assert result["loader"] == {"error": "KeyError: 'no stats'"}
    result["extraction"] = {"error": "OutOfMemoryError: CUDA out of memory"}
    lines = gpu.table(result).splitlines()
    assert lines[1:] == [
        "extraction  OutOfMemoryError: CUDA out of memory",
        "train -          compile=-     ZeroDivisionError: division by zero",
        "loader      KeyError: 'no stats'",
    ]


def test_a_failed_extraction_marks_the_run_incomplete_and_skips_the_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole script with its extraction section failing: training still measured, the loader (which
    reads the extraction's features) not run, ``complete`` false and exit status 1."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gpu = importlib.import_module("gpu")

    def out_of_memory(*_: object) -> None:
        raise torch.OutOfMemoryError("planted")

    monkeypatch.setattr(gpu, "extraction", out_of_memory)
    output = tmp_path / "gpu.json"
    assert gpu.main(["--smoke", "--output", str(output)]) == 1
    result = json.loads(output.read_text())
    assert result["complete"] is False
    assert result["extraction"] == {"error": "OutOfMemoryError: planted"}
    assert result["loader"]["error"].startswith("not run: the extraction section")
    assert [(row["size"], row["compile"]) for row in result["training"]] == [("tiny", False), ("tiny", True)]
    assert all("error" not in row for row in result["training"])
