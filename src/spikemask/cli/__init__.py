"""The ``spikemask`` command line: parse, load the config, call one function.

Every user mistake surfaces as a :class:`~spikemask.errors.SpikemaskError`, printed as one
line on stderr with exit status 2; no traceback.

One module per command group: :mod:`~spikemask.cli.misc` (``inspect``, ``synth``, ``demo``),
:mod:`~spikemask.cli.train` (``train``, ``finetune``), :mod:`~spikemask.cli.prepare`,
:mod:`~spikemask.cli.evaluate`, :mod:`~spikemask.cli.share` (``export``, ``push``) and
:mod:`~spikemask.cli.bench`. Building the parser imports none of torch or Lightning.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from spikemask.errors import SpikemaskError, SpikemaskWarning

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from spikemask.cli import bench, evaluate, misc, prepare, share, train

    parser = argparse.ArgumentParser(
        prog="spikemask", description="Multi-task masking transformers for spiking data."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    misc.add_inspect_synth(sub)
    train.add_train(sub)
    train.add_finetune(sub)
    misc.add_demo(sub)
    prepare.add_prepare_command(sub)
    evaluate.add_commands(sub)
    share.add_commands(sub)
    bench.add_commands(sub)
    return parser


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    """Command name -> the function that runs it."""
    from spikemask.cli import bench, evaluate, misc, prepare, share, train

    return {
        **misc.COMMANDS,
        **train.COMMANDS,
        **prepare.COMMANDS,
        **evaluate.COMMANDS,
        **share.COMMANDS,
        **bench.COMMANDS,
    }


class _NoAdverts(logging.Filter):
    """Drops Lightning's tips about third-party services, its hardware inventory
    ("GPU available: False ...", "TPU available ...") and its note on counting the
    training batches from the console."""

    NOISE = (
        "litlogger",
        "GPU available:",
        "TPU available:",
        "HPU available:",
        "to estimate number of stepping batches",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in self.NOISE)


def _quiet_third_party() -> None:
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spikemask`` console script."""
    _quiet_third_party()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from spikemask import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    handler = _commands()[args.command]
    try:
        with warnings.catch_warnings():  # restores the warning printer after the command
            _print_advice_as_one_line(args.command)
            return handler(args)
    except SpikemaskError as err:
        print(f"spikemask {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikemask {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from spikemask.training.resume import RunInterrupted

        if not isinstance(err, RunInterrupted):
            raise
        return _interrupted(args.command, err, sys.argv[1:] if argv is None else list(argv))


def _print_advice_as_one_line(command: str) -> None:
    """Print a :class:`SpikemaskWarning` as ``spikemask COMMAND: warning: ...`` (no file and
    line number); other warnings keep Python's format."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SpikemaskWarning):
            print(f"spikemask {command}: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _interrupted(command: str, err, argv: list[str]) -> int:
    """Report a run stopped by a signal, with the exact command that resumes it."""
    import shlex

    print(f"spikemask {command}: interrupted: {err}", file=sys.stderr)
    if err.saved:
        again = argv if "--resume" in argv else [*argv, "--resume"]
        print(f"resume with: spikemask {shlex.join(again)}", file=sys.stderr)
    else:
        print(f"nothing was trained yet; rerun: spikemask {shlex.join(argv)}", file=sys.stderr)
    return err.exit_code
