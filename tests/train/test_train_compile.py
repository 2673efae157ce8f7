"""training.compile: the trainer compiles the student and its patch loss; the run must train as the
eager one does. ``aot_eager`` traces forward and backward as inductor would, without generating
kernels (inductor's C++ build takes minutes on a CPU; its kernels are for a GPU run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_guards import build_trainer, in_process, small_run
from train_helpers import TinyData, metric_records

from distill.losses import patch_terms
from distill.train.trainer import train


def test_a_compiled_run_trains_as_the_eager_run(tiny_data: TinyData, tmp_path: Path) -> None:
    compiled = ["training.compile=true", "training.compile_backend=aot_eager", "logging.log_every=1"]
    trainer = build_trainer(small_run(tiny_data, tmp_path / "probe", "probe", *compiled))
    assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.patch_loss._torchdynamo_orig_callable is patch_terms  # type: ignore[attr-defined]
    losses = {}
    for name, extra in (("eager", ["logging.log_every=1"]), ("compiled", compiled)):
        run_dir = train(*in_process(small_run(tiny_data, tmp_path, name, *extra)))
        losses[name] = [r["loss"] for r in metric_records(run_dir, "train")]
    assert len(losses["eager"]) == 3
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)
