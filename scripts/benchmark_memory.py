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


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _snapshot() -> dict[str, float]:
    """Peak RSS so far, and the resident heap and mapped-file memory now (MB)."""
    status = _proc_status()
    return {
        "peak": _peak_mb(),
        "heap": status.get("RssAnon", 0) / 1024,
        "mapped": status.get("RssFile", 0) / 1024,
    }


def _phase_tracker(peaks: dict[str, dict[str, float]]):
    """A Lightning callback taking a memory snapshot at the end of each phase."""
    from lightning.pytorch.callbacks import Callback

    class PhasePeaks(Callback):
        def on_train_start(self, trainer, module):
            peaks["trainer set up (model, optimiser, sanity check)"] = _snapshot()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 1:
                peaks["first training step"] = _snapshot()

        def on_validation_end(self, trainer, module):
            if trainer.state.fn == "validate":  # run.fit's last pass over the val split
                peaks["final validation"] = _snapshot()
            elif trainer.global_step > 0:
                peaks[f"validation after step {trainer.global_step}"] = _snapshot()

        def on_train_end(self, trainer, module):
            peaks["training loop ended"] = _snapshot()

    return PhasePeaks()


def measure(folders: list[str], preset: str, steps: int) -> dict:
    """Runs inside the child process."""
    from spikemask.config import load_config
    from spikemask.data.loading import load_sessions
    from spikemask.training.run import train

    start = time.perf_counter()
    peaks = {"imports (torch, lightning)": _snapshot()}
    sessions = load_sessions(folders)
    peaks["sessions loaded (counts memory-mapped)"] = _snapshot()
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
        result = train(
            sessions, Path(out) / "run", config=config, callbacks=[_phase_tracker(peaks)]
        )
        peaks["checkpoints written, run closed"] = _snapshot()
        from spikemask.training.checkpoint import load_checkpoint

        model = load_checkpoint(Path(out) / "run" / "checkpoints" / "last").model
    status = _proc_status()
    per_session = sum(p.numel() for n, p in model.named_parameters() if "session_adapters" in n)
    shared = sum(p.numel() for n, p in model.named_parameters() if "session_adapters" not in n)
    return {
        "sessions": len(folders),
        "peak_rss_mb": _peak_mb(),
        "phases": peaks,
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
    _print_phases(rows)


def _print_phases(rows: list[dict]) -> None:
    """Memory at the end of each phase (in the order reached): where the peak is set."""
    header = " | ".join(f"{r['sessions']} session(s)" for r in rows)
    print(f"\n| at the end of | {header} |")
    print("|---|" + "---:|" * len(rows))
    phases = list(dict.fromkeys(p for r in rows for p in r["phases"]))
    for phase in phases:
        cells = []
        for r in rows:
            snap = r["phases"].get(phase)
            cells.append(
                ""
                if snap is None
                else f"{snap['peak']:.0f} / {snap['heap']:.0f} / {snap['mapped']:.0f}"
            )
        print(f"| {phase} | {' | '.join(cells)} |")
    print("\nCells: peak RSS so far / heap now / mapped files now (MB).")


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
