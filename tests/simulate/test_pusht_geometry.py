"""The T's centre computed from the state agrees with the simulator's own polygons, at any turn."""

from __future__ import annotations

import numpy as np
import pytest

from distill.simulate.pusht import block_centre

pytest.importorskip("gym_pusht", reason="the PushT simulator is the [sim] extra (make setup installs it)")


def _polygon_centre(points: np.ndarray) -> tuple[float, np.ndarray]:
    """Signed area and centroid of a simple polygon (shoelace), independent of the code under test."""
    x, y = points[:, 0], points[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    cx = ((x + np.roll(x, -1)) * cross).sum() / (6 * area)
    cy = ((y + np.roll(y, -1)) * cross).sum() / (6 * area)
    return area, np.array([cx, cy])


def test_block_centre_is_the_area_centre_of_the_simulators_t() -> None:
    import gym_pusht  # noqa: F401  (registers the environment)
    import gymnasium

    env = gymnasium.make("gym_pusht/PushT-v0", obs_type="state")
    try:
        angles = []
        for seed in range(6):
            state, _ = env.reset(seed=seed)
            body = env.unwrapped.block
            parts = [
                _polygon_centre(np.array([tuple(body.local_to_world(v)) for v in shape.get_vertices()]))
                for shape in body.shapes
            ]
            areas = np.array([abs(a) for a, _ in parts])
            expected = sum(a * c for a, (_, c) in zip(areas, parts, strict=True)) / areas.sum()
            got = block_centre(np.asarray(state, dtype=np.float64)[None])[0]
            np.testing.assert_allclose(got, expected, atol=1e-6)
            # the state's position is not the centre: it sits 40.7 units away along the turned body axis
            assert np.linalg.norm(got - np.asarray(state[2:4])) == pytest.approx(40.714, abs=1e-3)
            angles.append(float(state[4]))
        assert np.ptp(np.mod(angles, 2 * np.pi)) > 1.0  # the seeds turn the block: a wrong sign would show
    finally:
        env.close()
