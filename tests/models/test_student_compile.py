"""The training forward as torch.compile sees it: one graph, so nothing in it waits on the GPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from student_fixtures import images, make_student


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("overrides", [{}, {"head": "conv"}, {"quantizer": "fsq", "fsq_levels": (4, 3)}])
def test_the_training_forward_compiles_to_one_graph(overrides: dict[str, object]) -> None:
    """A value read back to the host inside the forward (``.item()``, ``float(tensor)``) splits the
    compiled graph and stalls the GPU mid-step; z batch norm's sample-count check once did both
    (5 graphs). What the GPU benchmark compiles must stay one graph."""
    student = make_student(**overrides).train()
    explained = torch._dynamo.explain(student)(images(4))
    assert explained.graph_break_count == 0, [reason.reason for reason in explained.break_reasons]
    assert explained.graph_count == 1
