"""CPU cost of the training loader per sample, five real-size int8 teachers: how many cores feed a GPU.

Measured as process CPU time (not wall time), so other load on a shared machine changes it little:
(1) a worker's own work per sample (tar reading, JPEG decoding, parsing and checking five feature
blobs, stacking a batch in the stored dtype), in one process with one torch thread; (2) the copy
into shared memory that DataLoader does for every tensor a worker sends, per MB. Samples per
second per core = 1 / (1) without transport and 1 / ((1) + (2) x MB per sample) with it. The cores a
GPU step needs = batch / step seconds / samples per second per core; ``--step-ms`` is that step
(default: ``deit_small`` at batch 256 on an H100 at 40% MFU of its bf16 peak, from the counted
35.7 GFLOP per image of forward + backward; benchmarks/gpu.py measures the real one).

    python benchmarks/loader_cores.py --output benchmarks/results/loader_cores.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from common import FIVE, base_parser, machine, synthetic_dataset, write_result
from distill.data.dataset import DecodedSample, open_view
from distill.data.join import iter_joined
from distill.data.loader import sample_bytes
from loader import add_real_size_features

DEIT_SMALL_STEP_MS = 35.7e9 * 256 / (0.4 * 989.4e12) * 1e3


def worker_seconds_per_sample(dataset: Path, batch: int, repeats: int) -> list[float]:
    view = open_view(dataset, "train", FIVE, None, False)
    out = []
    for _ in range(repeats + 1):  # the first pass warms the page cache and lazy imports
        started, count = time.process_time(), 0
        pending: list[DecodedSample] = []
        for shard in view.shards:
            for sample in iter_joined(view.path, shard.name, view.teachers, expected=shard.count):
                pending.append(view.decode(sample))
                count += 1
                if len(pending) == batch:
                    view.pack(pending)
                    pending = []
        out.append((time.process_time() - started) / count)
    return out[1:]


def shared_memory_seconds_per_mb(megabytes: int, repeats: int) -> float:
    """What DataLoader's pickling does to a worker's batch: a fresh shared-memory copy."""
    rows = [torch.zeros(2**20, dtype=torch.int8) for _ in range(megabytes)]
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        torch.stack(rows).share_memory_()
        best = min(best, time.process_time() - started)
    return best / megabytes


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("loader_cores", __doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="samples per stream part a worker stacks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-ms", type=float, default=DEIT_SMALL_STEP_MS)
    parser.add_argument("--step-batch", type=int, default=256)
    parser.add_argument("--dataset", type=Path, default=None, help="reuse a real-size dataset written before")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a loader worker
    with tempfile.TemporaryDirectory() as scratch:
        dataset = args.dataset
        if dataset is None:
            dataset = synthetic_dataset(Path(scratch), args.images, 224, args.images // 4)
            add_real_size_features(dataset)
        per_sample = worker_seconds_per_sample(dataset, args.batch, args.repeats)
        megabytes = sample_bytes(open_view(dataset, "train", FIVE, None, False)) / 2**20
    worker = min(per_sample)
    shm = shared_memory_seconds_per_mb(int(megabytes * args.batch), args.repeats)
    with_transport = worker + shm * megabytes
    needed = args.step_batch / (args.step_ms / 1e3)
    result = {
        "benchmark": "loader_cores",
        "machine": machine(torch.device("cpu")),
        "teachers": list(FIVE),
        "storage": "int8",
        "mb_per_sample": round(megabytes, 3),
        "worker_ms_per_sample": [round(s * 1e3, 3) for s in per_sample],
        "shared_memory_copy_ms_per_mb": round(shm * 1e3, 3),
        "samples_per_s_per_core": round(1 / worker, 1),
        "samples_per_s_per_core_with_transport": round(1 / with_transport, 1),
        "step_ms": round(args.step_ms, 2),
        "step_batch": args.step_batch,
        "samples_per_s_needed": round(needed, 1),
        "cores_needed": round(needed * worker, 1),
        "cores_needed_with_transport": round(needed * with_transport, 1),
        "note": "process CPU time on a shared 2-core machine (other jobs running); the shared-memory copy "
        "includes page faults, which cost more in a VM than on bare metal",
    }
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
