"""`make demo TEACHERS=hub` with local weights: the real-teacher code path end to end.

No hub is reachable here, so each tiny teacher is saved the way a user keeps real weights on disk
(save_pretrained directories, an open_clip state-dict file, a SAM checkpoint file) and the demo
loads them by path through extraction, training and decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
from safetensors.torch import save_file

from distill.demo.pipeline import DemoConfig, run_demo
from distill.teachers import clip, depth_anything, dinov2, mae, sam
from distill.teachers.clip import TINY_ARCH

pytestmark = pytest.mark.slow


def write_local_weights(root: Path) -> dict[str, str]:
    root.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in clip.tiny_clip_model().state_dict().items()}, root / "clip.safetensors"
    )
    dinov2.build_tiny().model.save_pretrained(root / "dinov2")
    mae.build_tiny().model.save_pretrained(root / "mae")
    depth_anything.build_tiny_depth_anything().model.save_pretrained(root / "depth_anything")
    save_file(
        {k: v.contiguous() for k, v in sam.build_tiny_sam().model.state_dict().items()},
        root / "sam.safetensors",
    )
    return {
        "clip": f"{TINY_ARCH}:{root / 'clip.safetensors'}",
        "dinov2": str(root / "dinov2"),
        "mae": str(root / "mae"),
        "depth_anything": str(root / "depth_anything"),
        "sam": f"tiny:{root / 'sam.safetensors'}",
    }


def test_demo_with_real_teacher_loading_from_local_paths(tmp_path: Path) -> None:
    weights = write_local_weights(tmp_path / "models")
    cfg = DemoConfig(
        output=tmp_path / "demo",
        teacher_source="hub",
        weights=tuple(sorted(weights.items())),
        episodes=8,
        frames=3,
        steps=4,
        batch_size=4,
        world_model_steps=0,  # 3-frame episodes hold no rollout; test_demo.py runs that step
    )
    result = run_demo(cfg)

    manifest = json.loads((result.dataset / "manifest.json").read_text())
    assert {name: (record["source"], record["weights"]) for name, record in manifest["teachers"].items()} == {
        name: ("hub", path) for name, path in weights.items()
    }
    resolved = (result.run_dir / "config.yaml").read_text()
    assert all(path in resolved for path in weights.values())
    assert result.held_out is not None
    with av.open(str(result.decoded / f"{result.held_out.stem}.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == cfg.frames
