"""Episodes from real simulators, as videos with per-frame state, action and heading sidecars."""

from distill.simulate.pusht import EpisodeConfig, render_episodes

__all__ = ["EpisodeConfig", "render_episodes"]
