"""``python -m distill.simulate OUT``: PushT episodes as MP4 videos with per-frame state/action/heading sidecars."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distill.simulate.pusht import ACTION_NAMES, HEADING_NAMES, STATE_NAMES, EpisodeConfig, render_episodes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-simulate",
        description="Render PushT episodes (gym-pusht; pip install -e '.[sim]') with a seeded scripted pusher: "
        "<out>/episode_NNNNNN.mp4 plus episode_NNNNNN.npz holding one row per frame of "
        f"state ({', '.join(STATE_NAMES)}), action ({', '.join(ACTION_NAMES)}) and heading ({', '.join(HEADING_NAMES)}). "
        "Organise them with distill-subsample-videos, which carries each frame's rows into its metadata.",
    )
    parser.add_argument("output", type=Path, help="folder for the videos and sidecars")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--frames", type=int, default=60, help="frames per episode (10 per simulated second)")
    parser.add_argument("--size", type=int, default=96, help="rendered frame side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-episode", type=int, default=0, help="number of the first episode written")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = EpisodeConfig(args.output, args.episodes, args.frames, args.size, args.seed, args.first_episode)
    paths = render_episodes(cfg)
    print(json.dumps({"output": str(args.output), "videos": len(paths)}))
    return 0
