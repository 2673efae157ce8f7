"""The world-model step of the demo: encode a frames dataset, train briefly, roll out on held-out episodes."""

from __future__ import annotations

from pathlib import Path

from distill.encode import EncodeConfig, encode_latents
from distill.worldmodel.rollout import RolloutMetrics
from distill.worldmodel.run import RolloutConfig, evaluate_rollouts
from distill.worldmodel.train import TrainConfig, train_world_model


def run_worldmodel_demo(
    frames_dataset: Path,
    checkpoint: Path,
    out_dir: Path,
    steps: int = 300,
    horizon: int = 5,
    device: str = "cpu",
) -> RolloutMetrics:
    """``<out_dir>/latents`` (train and val), ``<out_dir>/worldmodel``, and ``<out_dir>/rollouts`` with
    metrics.json and decoded rollouts of the val split; returns the metrics. The frames dataset needs a
    ``val`` split with episodes long enough for a 4-frame context and ``horizon`` steps."""
    latents = out_dir / "latents"
    encode_latents(EncodeConfig(checkpoint, frames_dataset, latents, device=device))
    model = out_dir / "worldmodel"
    train_world_model(TrainConfig(latents, model, steps=steps, batch_size=32, device=device, log_every=50))
    rollouts = RolloutConfig(
        model, latents, out_dir / "rollouts", "val", horizon, checkpoint, 2, "auto", device
    )
    return evaluate_rollouts(rollouts)
