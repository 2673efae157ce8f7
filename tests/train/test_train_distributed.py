"""Reading torchrun's environment: alone without it, clear errors when it is incomplete."""

from __future__ import annotations

import pytest
import torch

from distill.distributed import init_distributed

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_without_torchrun_runs_alone() -> None:
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend, ctx.is_main) == (0, 1, 0, None, True)
    assert ctx.device == torch.device("cpu") and not ctx.distributed


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "1", "WORLD_SIZE": "2"}, "LOCAL_RANK"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK=2 is outside WORLD_SIZE=2"),
        ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='x' is not an integer"),
    ],
)
def test_incomplete_torchrun_environment_is_an_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises((RuntimeError, ValueError), match=message):
        init_distributed("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_requested_without_a_gpu() -> None:
    with pytest.raises(RuntimeError, match="device=cuda but"):
        init_distributed("cuda")
