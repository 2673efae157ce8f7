"""Per-frame metadata arrays stacked for evaluation and latent export; a frame that differs is refused."""

from __future__ import annotations

import pytest
import torch

from distill.data.frame_arrays import stack_frame_arrays


def test_rows_stack_in_frame_order() -> None:
    metas = [{"arrays": {"state": [i, 2 * i], "action": [-i]}} for i in range(3)]
    out = stack_frame_arrays(metas, ["a", "b", "c"], "here")
    assert torch.equal(out["state"], torch.tensor([[0, 0], [1, 2], [2, 4]], dtype=torch.float64))
    assert torch.equal(out["action"], torch.tensor([[0], [-1], [-2]], dtype=torch.float64))
    assert stack_frame_arrays([{}, {}], ["a", "b"], "here") == {}


def test_a_frame_with_other_names_or_lengths_is_refused_by_key() -> None:
    with pytest.raises(ValueError, match=r"here: frame 'b' carries arrays \[\], the first frame \['state'\]"):
        stack_frame_arrays([{"arrays": {"state": [1.0]}}, {}], ["a", "b"], "here")
    with pytest.raises(ValueError, match="array 'state' changes length"):
        stack_frame_arrays(
            [{"arrays": {"state": [1.0]}}, {"arrays": {"state": [1.0, 2.0]}}], ["a", "b"], "here"
        )
