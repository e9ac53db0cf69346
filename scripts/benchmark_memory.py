"""Peak memory of multi-session training, and its projection to hundreds of sessions.

Each measurement runs in a fresh process: load the first n sessions (memory-mapped counts),
build the model, train a few steps with session-balanced sampling, and report the peak
resident memory (ru_maxrss). A straight line through the measurements projects the memory of
many more sessions; the per-session parameter count explains the slope.

    python scripts/benchmark_memory.py --data ../shared/data/steinmetz2019 --counts 1 3 11

Prints a markdown table (paste into BENCHMARKS.md with the command, machine and date).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(folders: list[str], preset: str, steps: int) -> dict:
    """Runs inside the child process."""
    from spikemask.config import load_config
    from spikemask.training.run import train

    start = time.perf_counter()
    config = load_config(
        preset=preset,
        sets=[
            f"train.max_steps={steps}",
            "train.max_epochs=null",
            "train.progress_bar=false",
            "train.tensorboard=false",
            "data.session_sampling=balanced",
        ],
    )
    with tempfile.TemporaryDirectory() as out:
        result = train(folders, Path(out) / "run", config=config)
        from spikemask.training.checkpoint import load_checkpoint

        model = load_checkpoint(Path(out) / "run" / "checkpoints" / "last").model
    status = _proc_status()
    per_session = sum(p.numel() for n, p in model.named_parameters() if "session_adapters" in n)
    shared = sum(p.numel() for n, p in model.named_parameters() if "session_adapters" not in n)
    return {
        "sessions": len(folders),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_mb": status.get("RssAnon", 0) / 1024,
        "file_mb": status.get("RssFile", 0) / 1024,
        "session_params": per_session,
        "shared_params": shared,
        "steps": result.steps,
        "seconds": time.perf_counter() - start,
    }


def _proc_status() -> dict[str, int]:
    """Resident memory split into anonymous (heap) and file-backed (mapped data) kB."""
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                values[key] = int(rest.split()[0])
    except OSError:  # not Linux
        pass
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of session folders")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 3, 11])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--project", type=int, default=400, help="session count to project to")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.preset, args.steps)))
        return
    folders = sorted(str(p) for p in args.data.iterdir() if (p / "data").is_dir())
    rows = []
    for count in args.counts:
        command = [
            sys.executable,
            __file__,
            "--data",
            str(args.data),
            "--preset",
            args.preset,
            "--steps",
            str(args.steps),
            "--child",
            *folders[:count],
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(f"measured {count} session(s)", file=sys.stderr)
    _print_table(rows, args.project)


def _print_table(rows: list[dict], project: int) -> None:
    print(
        "| sessions | peak RSS (MB) | at end: heap (MB) | at end: mapped files (MB) "
        "| per-session params (all sessions) | shared params | time (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['sessions']} | {r['peak_rss_mb']:.0f} | {r['anon_mb']:.0f} | "
            f"{r['file_mb']:.0f} | {r['session_params']:,} | {r['shared_params']:,} | "
            f"{r['seconds']:.0f} |"
        )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        span = last["sessions"] - first["sessions"]
        slope = (last["peak_rss_mb"] - first["peak_rss_mb"]) / span
        projected = first["peak_rss_mb"] + slope * (project - first["sessions"])
        params_each = last["session_params"] / last["sessions"]
        heap_slope = (last["anon_mb"] - first["anon_mb"]) / span
        heap = first["anon_mb"] + heap_slope * (project - first["sessions"])
        print(
            f"\nPeak RSS grows {slope:.1f} MB per session (projected {projected / 1024:.1f} GB "
            f"for {project} sessions), of which the heap grows {heap_slope:.1f} MB per session "
            f"(projected {heap / 1024:.1f} GB); the rest is memory-mapped spike counts, page "
            f"cache the OS can reclaim. Per-session layers average {params_each:,.0f} "
            f"parameters ({params_each * 16 / 2**20:.1f} MB with gradients and AdamW state)."
        )


if __name__ == "__main__":
    main()
