"""Where training metrics go: ``metrics.jsonl`` in the run dir, wandb, and a tqdm bar (rank 0 only).

``metrics.jsonl`` holds one JSON object per logged step (``"kind": "train"``) or validation pass
(``"kind": "val"``). On resume the lines after the resumed step are dropped, so the file always
describes one trajectory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from distill.io import atomic_write_text

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_id.txt"
WandbMode = Literal["online", "offline", "disabled"]


@dataclass(frozen=True)
class WandbSettings:
    mode: str | None  # None: WANDB_MODE from the environment, else offline
    project: str
    entity: str | None
    tags: tuple[str, ...]

    def resolved_mode(self) -> WandbMode:
        mode = self.mode or os.environ.get("WANDB_MODE") or "offline"
        if mode == "dryrun":
            mode = "offline"
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logging.wandb.mode / WANDB_MODE={mode!r}: use online, offline or disabled")
        return mode  # type: ignore[return-value]


def truncate_after(path: Path, step: int) -> None:
    """Keep the records of steps ``<= step`` (a resumed run redoes the later ones)."""
    if not path.is_file():
        return
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill that interrupted the run
            log.warning(
                "%s: dropping line %d, not JSON (cut by the interruption?): %.80s", path, number, line
            )
            continue
        if int(record.get("step", 0)) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf; keep the information as a string
    return value


class MetricsSink:
    """Appends records to metrics.jsonl, mirrors them to wandb and drives the progress bar."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        wandb_settings: WandbSettings,
        config: dict[str, Any],
        run_name: str,
        total_steps: int,
        start_step: int,
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self._wandb: Any = None
        self._bar: tqdm[Any] | None = None
        if not enabled:
            return
        truncate_after(self.path, start_step)
        mode = wandb_settings.resolved_mode()
        if mode != "disabled":
            self._wandb = _start_wandb(run_dir, wandb_settings, mode, config, run_name)
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=run_name,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=1.0,
        )

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self._wandb is not None:
            prefix = record.get("kind", "train")
            payload = {
                f"{prefix}/{k}": v for k, v in record.items() if isinstance(v, int | float) and k != "step"
            }
            self._wandb.log(payload, step=int(record["step"]))

    def advance(self, steps: int, loss: float | None, lr: float) -> None:
        if self._bar is None:
            return
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(
    run_dir: Path, settings: WandbSettings, mode: WandbMode, config: dict[str, Any], name: str
) -> Any:
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    if id_file.is_file():
        run_id = id_file.read_text(encoding="utf-8").strip()
    else:
        run_id = secrets.token_hex(8)
        atomic_write_text(id_file, run_id + "\n")
    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        name=name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=config,
        mode=mode,
        tags=list(settings.tags),
    )
