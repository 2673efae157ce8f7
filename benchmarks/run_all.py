"""Run every benchmark and merge their JSON into one summary.

Each benchmark is a script in this folder that accepts ``--output PATH`` and writes one JSON
object there. Usage: ``python benchmarks/run_all.py --output benchmarks/results/summary.json``
(``make bench``). Extra arguments after ``--`` are passed to every benchmark.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("extraction", "storage", "loader", "student")


def run_one(name: str, extra: list[str], scratch: Path) -> dict[str, object]:
    output = scratch / f"{name}.json"
    command = [sys.executable, str(HERE / f"{name}.py"), "--output", str(output), *extra]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmark {name} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}"
        )
    result: dict[str, object] = json.loads(output.read_text())
    result["wall_seconds"] = round(seconds, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=HERE / "results" / "summary.json")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    summary: dict[str, object] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0)
            if torch.cuda.is_available()
            else f"cpu x{torch.get_num_threads()}",
        }
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.only:
            print(f"[run_all] {name} ...", flush=True)
            summary[name] = run_one(name, extra, Path(scratch))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(args.output)
    print(json.dumps(summary, indent=2))
    print(f"[run_all] wrote {args.output}")


if __name__ == "__main__":
    main()
