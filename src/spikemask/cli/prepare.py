"""``spikemask prepare ibl|nwb|brainsets``: raw recordings -> the IBL parquet layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikemask.errors import SpikemaskError

__all__ = ["COMMANDS", "add_prepare_command", "cmd_prepare"]


def add_prepare_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prepare", help="convert raw recordings (IBL via ONE, NWB, brainsets)")
    kinds = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    ibl = kinds.add_parser("ibl", help="an IBL session through the ONE API (extra: ibl)")
    which = ibl.add_mutually_exclusive_group(required=True)
    which.add_argument("--eid", help="session id (experiment id)")
    which.add_argument("--eids", type=Path, help="text file with one eid per line")
    ibl.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (with --eids: one sub-folder per session)",
    )
    ibl.add_argument("--workers", type=int, default=1, help="parallel sessions (--eids)")
    ibl.add_argument("--cache-dir", type=Path, help="ONE cache folder")
    ibl.add_argument(
        "--local",
        action="store_true",
        help="offline: --cache-dir is a local folder of ALF sessions",
    )
    ibl.add_argument("--align-event", default="stimOn_times")
    ibl.add_argument(
        "--window",
        type=float,
        nargs=2,
        default=(-0.5, 1.5),
        metavar=("START", "END"),
        help="window around the event in seconds (default -0.5 1.5)",
    )
    ibl.add_argument("--bin-size", type=float, default=0.02, help="seconds (default 0.02)")
    ibl.add_argument("--regions", choices=("Allen", "Beryl", "Cosmos"), default="Allen")
    ibl.add_argument("--seed", type=int, default=0, help="seed of the 70/10/20 split")
    _add_unit_filters(ibl)

    nwb = kinds.add_parser("nwb", help="an NWB file (extra: nwb)")
    nwb.add_argument("file", type=Path)
    nwb.add_argument("--out", type=Path, required=True)
    nwb.add_argument("--bin-size", type=float, default=0.02)
    nwb.add_argument(
        "--trials",
        choices=("auto", "yes", "no"),
        default="auto",
        help="align to the trials table (auto: when the file has one)",
    )
    nwb.add_argument("--align-column", default="start_time")
    nwb.add_argument("--window", type=float, nargs=2, default=(-0.5, 1.5), metavar=("START", "END"))
    nwb.add_argument(
        "--window-length",
        type=float,
        default=2.0,
        help="fixed windows without trials: length in seconds",
    )
    nwb.add_argument("--step", type=float, help="fixed windows: step (default = length)")
    nwb.add_argument("--epoch", help="restrict fixed windows to an epoch / interval table")
    nwb.add_argument("--time-range", type=float, nargs=2, metavar=("START", "END"))
    nwb.add_argument(
        "--behavior",
        action="append",
        metavar="NWB_PATH",
        help="behaviour series to bin (repeatable; default: discovered)",
    )
    nwb.add_argument("--seed", type=int, default=0)
    _add_brainsets(kinds)


def _add_brainsets(kinds: argparse._SubParsersAction) -> None:
    bs = kinds.add_parser(
        "brainsets",
        help="brainsets / temporaldata session files, e.g. IBL BrainWideBench (extra: brainsets)",
        description="Read brainsets session files (temporaldata HDF5). Windows and split are the "
        "file's train/valid/test domains when it has them (the benchmark's own), else windows "
        "around a trials field with a seeded 70/10/20 split.",
    )
    bs.add_argument("files", type=Path, nargs="+", metavar="FILE.h5")
    bs.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (several files: one sub-folder per file, named after it)",
    )
    bs.add_argument("--bin-size", type=float, default=0.02, help="seconds (default 0.02)")
    bs.add_argument("--align-event", default="stimOn_times", help="trials field (trial windows)")
    bs.add_argument(
        "--window", type=float, nargs=2, default=(-0.5, 1.5), metavar=("START", "END"),
        help="window around the align event in seconds (trial windows; default -0.5 1.5)",
    )  # fmt: skip
    bs.add_argument(
        "--windows",
        choices=("auto", "domains", "trials"),
        default="auto",
        help="domains: the file's split domains; trials: windows around --align-event with a "
        "seeded split; auto: domains when the file has them",
    )
    bs.add_argument(
        "--behavior",
        action="append",
        metavar="OBJECT.FIELD",
        help="time series to bin, e.g. wheel.speed (repeatable; default: every one)",
    )
    bs.add_argument("--seed", type=int, default=0, help="seed of the split (trial windows)")
    _add_unit_filters(bs)


def _add_unit_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--good-units",
        action="store_true",
        help="keep only units with IBL QC label 1 (clusters.metrics label == 1, 'good')",
    )
    parser.add_argument(
        "--min-rate",
        type=float,
        metavar="HZ",
        help="keep only units firing at least HZ spikes/s inside the kept trial windows",
    )


def _print_units_dropped(report: object) -> None:
    dropped = getattr(report, "units_dropped", None)
    if dropped:
        print("   units dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))


def _eids(path: Path) -> list[str]:
    if not path.is_file():
        raise SpikemaskError(f"eid list {str(path)!r} does not exist")
    eids = [line.strip() for line in path.read_text().splitlines()]
    eids = [e for e in eids if e and not e.startswith("#")]
    if not eids:
        raise SpikemaskError(f"eid list {str(path)!r} holds no eid")
    return eids


def _cmd_ibl(args: argparse.Namespace) -> int:
    from spikemask.data.sources.ibl import IBLPrepareConfig, make_one, prepare_ibl, prepare_ibl_many

    config = IBLPrepareConfig(
        align_event=args.align_event,
        window_s=tuple(args.window),
        bin_size_s=args.bin_size,
        region_mapping=args.regions,
        seed=args.seed,
        good_units_only=args.good_units,
        min_rate_hz=args.min_rate,
    )
    if args.eid:
        one = make_one(args.cache_dir, local=args.local)
        reports = [prepare_ibl(args.eid, args.out, one=one, config=config)]
    else:
        reports = prepare_ibl_many(
            _eids(args.eids),
            args.out,
            workers=args.workers,
            cache_dir=args.cache_dir,
            local=args.local,
            config=config,
        )
    failed = 0
    for report in reports:
        if getattr(report, "error", None):
            failed += 1
            print(f"{report.session_id}: FAILED: {report.error}")
        else:
            state = "already prepared" if getattr(report, "skipped", False) else "prepared"
            print(
                f"{report.session_id}: {state}: {report.trials_kept}/{report.trials_total} "
                f"trials kept, {report.units} units -> {report.out_dir}"
            )
            if report.trials_dropped:
                print(
                    "   dropped: " + ", ".join(f"{k} {v}" for k, v in report.trials_dropped.items())
                )
            _print_units_dropped(report)
    return 1 if failed else 0


def _cmd_nwb(args: argparse.Namespace) -> int:
    from spikemask.data.sources.nwb import NWBPrepareConfig, prepare_nwb

    config = NWBPrepareConfig(
        bin_size_s=args.bin_size,
        use_trials={"auto": None, "yes": True, "no": False}[args.trials],
        align_column=args.align_column,
        window_s=tuple(args.window),
        window_length_s=args.window_length,
        step_s=args.step,
        epoch=args.epoch,
        time_range_s=tuple(args.time_range) if args.time_range else None,
        behavior_paths=tuple(args.behavior) if args.behavior else None,
        seed=args.seed,
    )
    report = prepare_nwb(args.file, args.out, config=config)
    print(
        f"{report.session_id}: {report.trials_kept}/{report.trials_total} windows kept, "
        f"{report.units} units -> {report.out_dir}"
    )
    return 0


def _cmd_brainsets(args: argparse.Namespace) -> int:
    from spikemask.data.sources.brainsets import BrainsetsPrepareConfig, prepare_brainsets

    config = BrainsetsPrepareConfig(
        bin_size_s=args.bin_size,
        align_event=args.align_event,
        window_s=tuple(args.window),
        use_domains={"auto": None, "domains": True, "trials": False}[args.windows],
        behavior_paths=tuple(args.behavior) if args.behavior else None,
        good_units_only=args.good_units,
        min_rate_hz=args.min_rate,
        seed=args.seed,
    )
    stems = [path.stem for path in args.files]
    if len(set(stems)) < len(stems):
        raise SpikemaskError(
            f"file names {stems} repeat; expected distinct names (each gets its own folder)"
        )
    for path in args.files:
        out = args.out if len(args.files) == 1 else args.out / path.stem
        report = prepare_brainsets(path, out, config=config)
        print(
            f"{report.session_id}: {report.trials_kept}/{report.trials_total} windows kept, "
            f"{report.units} units -> {report.out_dir}"
        )
        _print_units_dropped(report)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    commands = {"ibl": _cmd_ibl, "nwb": _cmd_nwb, "brainsets": _cmd_brainsets}
    return commands[args.source](args)


COMMANDS = {"prepare": cmd_prepare}
