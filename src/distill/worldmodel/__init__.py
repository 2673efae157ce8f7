"""A small latent world model: next z from the last H z's and actions, trained on a latent dataset.

Python API::

    from distill.worldmodel import TrainConfig, train_world_model, RolloutConfig, evaluate_rollouts
    train_world_model(TrainConfig(Path("latents"), Path("wm")))
    metrics = evaluate_rollouts(RolloutConfig(Path("wm"), Path("latents"), Path("out"), student=Path("student")))
"""

from distill.worldmodel.config import WorldModelConfig
from distill.worldmodel.model import LatentWorldModel, load_world_model, save_world_model
from distill.worldmodel.rollout import RolloutMetrics, rollout_metrics
from distill.worldmodel.run import RolloutConfig, evaluate_rollouts
from distill.worldmodel.train import TrainConfig, train_world_model

__all__ = [
    "LatentWorldModel",
    "RolloutConfig",
    "RolloutMetrics",
    "TrainConfig",
    "WorldModelConfig",
    "evaluate_rollouts",
    "load_world_model",
    "rollout_metrics",
    "save_world_model",
    "train_world_model",
]
