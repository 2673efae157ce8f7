"""PushT episodes (gym-pusht: pymunk physics, pygame drawing) as MP4 videos plus ``.npz`` sidecars.

The scene has two moving objects, the small round agent and the T-shaped block it pushes, over a
static goal marker: the kind of frame a world model must carry. A scripted, seeded policy steers the
agent towards the block and through it (with random detours), so both objects move in every episode.

Each episode ``episode_NNNNNN`` becomes ``<out>/episode_NNNNNN.mp4`` and ``<out>/episode_NNNNNN.npz``
holding one row per video frame: ``state`` [T, 5] (agent x, y, block x, y, block angle in radians, in the
simulator's 512 x 512 workspace units), ``action`` [T, 2] (the agent's commanded target position) and
``heading`` [T, 2] (cos and sin of the block angle: the block's orientation, which the T shape shows).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from distill.decode.media import write_mp4
from distill.io import atomic_path

STATE_NAMES = ("agent_x", "agent_y", "block_x", "block_y", "block_angle")
ACTION_NAMES = ("target_x", "target_y")
HEADING_NAMES = ("block_cos", "block_sin")  # the block angle as a unit vector: no jump at the 0 / 2 pi wrap
# gym-pusht's T in its body's frame: a 120 x 30 bar over y 0-30 and a 30 x 90 stem over y 30-120. The state's
# block position is the body's origin (the middle of the bar's outer edge); the drawn T's centre of area sits
# this far along the body's y axis from it.
T_CENTRE_OFFSET = (120 * 30 * 15 + 30 * 90 * 75) / (120 * 30 + 30 * 90)


@dataclass(frozen=True)
class EpisodeConfig:
    output: Path
    episodes: int = 32
    frames: int = 60  # frames per episode, at the simulator's 10 Hz control rate
    size: int = 96  # rendered frame side in pixels (LeRobot's PushT uses 96)
    seed: int = 0
    first_episode: int = 0  # episode numbering starts here (to extend a folder)

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.frames < 1 or self.size < 16:
            raise ValueError(
                f"need episodes >= 1, frames >= 1, size >= 16; got {self.episodes}, {self.frames}, {self.size}"
            )


class PushPolicy:
    """Seeded scripted pusher: waypoints behind the block (so the agent pushes it) or anywhere."""

    max_step = 40.0  # workspace units per control step: keeps motion smooth at 10 Hz

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.waypoint = np.zeros(2)
        self.steps_left = 0

    def __call__(self, state: np.ndarray) -> np.ndarray:
        agent, block = state[:2], state[2:4]
        if self.steps_left == 0 or np.linalg.norm(self.waypoint - agent) < 10:
            if self.rng.random() < 0.7:
                away = block - agent
                direction = away / max(float(np.linalg.norm(away)), 1e-6)
                self.waypoint = np.clip(block + 60 * direction + self.rng.normal(0, 25, 2), 60, 452)
            else:
                self.waypoint = self.rng.uniform(60, 452, 2)
            self.steps_left = int(self.rng.integers(6, 16))
        self.steps_left -= 1
        delta = self.waypoint - agent
        length = float(np.linalg.norm(delta))
        if length > self.max_step:
            delta *= self.max_step / length
        return np.clip(agent + delta, 10, 502).astype(np.float32)


def _make_env(size: int):  # type: ignore[no-untyped-def]
    try:
        import gym_pusht  # noqa: F401  (registers the environment)
        import gymnasium
    except ImportError as exc:
        raise ImportError(
            "the PushT simulator is an optional extra: pip install -e '.[sim]' (gym-pusht, gymnasium, pygame, pymunk)"
        ) from exc
    return gymnasium.make(
        "gym_pusht/PushT-v0",
        obs_type="state",
        render_mode="rgb_array",
        observation_width=size,
        observation_height=size,
    )


def render_episode(env, seed: int, frames: int) -> tuple[list[Image.Image], np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """One episode: frames, state rows [T, 5] and action rows [T, 2] (action t is applied after frame t)."""
    state, _ = env.reset(seed=seed)
    policy = PushPolicy(np.random.default_rng(seed))
    images, states, actions = [], [], []
    for _ in range(frames):
        images.append(Image.fromarray(env.unwrapped._render(visualize=False)))
        action = policy(np.asarray(state))
        states.append(np.asarray(state, dtype=np.float64))
        actions.append(action)
        state, _, _, _, _ = env.step(action)
    return images, np.stack(states).astype(np.float32), np.stack(actions).astype(np.float32)


def heading(states: np.ndarray) -> np.ndarray:
    """[T, 2] cos and sin of the block angle: what a linear probe can read, where the raw angle jumps by
    2 pi as the block turns past the wrap."""
    angle = states[:, STATE_NAMES.index("block_angle")]
    return np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)


def block_centre(states: np.ndarray) -> np.ndarray:
    """[T, 2] the drawn T's centre of area in workspace units: where something that sees the block but not
    which way it is turned would place it (the state's position is offset from it by a turned vector)."""
    x, y, angle = (
        states[:, STATE_NAMES.index(name)].astype(np.float64)
        for name in ("block_x", "block_y", "block_angle")
    )
    return np.stack([x - T_CENTRE_OFFSET * np.sin(angle), y + T_CENTRE_OFFSET * np.cos(angle)], axis=1)


def render_episodes(cfg: EpisodeConfig) -> list[Path]:
    """Write ``cfg.episodes`` episodes (video + sidecar each); returns the video paths."""
    cfg.output.mkdir(parents=True, exist_ok=True)
    env = _make_env(cfg.size)
    paths = []
    try:
        for number in range(cfg.first_episode, cfg.first_episode + cfg.episodes):
            images, states, actions = render_episode(env, cfg.seed * 1_000_003 + number, cfg.frames)
            stem = cfg.output / f"episode_{number:06d}"
            buffer = io.BytesIO()
            np.savez(buffer, state=states, action=actions, heading=heading(states))
            with atomic_path(stem.with_suffix(".npz")) as tmp:
                tmp.write_bytes(buffer.getvalue())
            paths.append(write_mp4(images, stem.with_suffix(".mp4"), Fraction(10)))
    finally:
        env.close()
    return paths
