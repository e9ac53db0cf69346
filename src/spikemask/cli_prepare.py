"""``spikemask prepare ibl|nwb``: raw recordings -> the IBL parquet layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikemask.errors import SpikemaskError

__all__ = ["add_prepare_command", "cmd_prepare"]


def add_prepare_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prepare", help="convert raw recordings (IBL via ONE, NWB)")
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
    from spikemask.data.ibl import IBLPrepareConfig, make_one, prepare_ibl, prepare_ibl_many

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
    from spikemask.data.nwb import NWBPrepareConfig, prepare_nwb

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


def cmd_prepare(args: argparse.Namespace) -> int:
    return _cmd_ibl(args) if args.source == "ibl" else _cmd_nwb(args)
