"""The run directory: its name, the saved config, and which checkpoint (if any) to resume from.

Rank 0 decides (the timestamp name, the checkpoint to resume) and broadcasts the decision, so
ranks that start a second apart still agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from distill.checkpoints import complete_checkpoints, latest_checkpoint, remove_incomplete
from distill.distributed import DistContext, broadcast_object
from distill.io import atomic_write_text
from distill.train.config import RunConfig
from distill.train.typed import ConfigError

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class RunPlan:
    name: str
    run_dir: Path
    resume_from: Path | None  # a complete checkpoint directory


def _decide(cfg: RunConfig) -> RunPlan | str:
    """Rank 0's decision, or the error message every rank should raise."""
    name = cfg.run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output_dir) / name
    if cfg.resume is None:
        done = complete_checkpoints(run_dir)
        if done:
            return (
                f"resume: {run_dir} already holds checkpoints (latest {done[-1].name}); pass resume=auto to "
                "continue that run, or choose another run_name"
            )
        return RunPlan(name, run_dir, None)
    if cfg.resume == "auto":
        return RunPlan(name, run_dir, latest_checkpoint(run_dir))
    path = Path(cfg.resume)
    if not path.is_dir():
        return f"resume: {path} is not a directory; use resume=auto or a checkpoints/step_* directory"
    return RunPlan(name, run_dir, path)


def plan_run(cfg: RunConfig, ctx: DistContext, resolved: dict[str, Any]) -> RunPlan:
    """Agree on the run dir across ranks; rank 0 clears interrupted writes and saves config.yaml."""
    decision = broadcast_object(ctx, _decide(cfg) if ctx.is_main else None)
    if isinstance(decision, str):
        raise ConfigError(decision)
    plan: RunPlan = decision
    if ctx.is_main:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete(plan.run_dir)
        saved = dict(resolved, run_name=plan.name)
        atomic_write_text(plan.run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(saved)))
    return plan
