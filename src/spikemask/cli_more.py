"""Sub-commands beyond training: registered by :func:`add_commands`."""

from __future__ import annotations

import argparse

COMMANDS: dict = {}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the remaining sub-commands to the ``spikemask`` parser."""
