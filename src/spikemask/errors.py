"""Errors a user can cause.

Every mistake a user can make (bad path, malformed file, NaN counts, unknown session,
mismatched shapes, bad flag) raises :class:`SpikemaskError` with one message naming
what was wrong and what was expected. The CLI prints that message and exits non-zero
without a traceback; anything else escaping is a bug in spikemask.
"""

from __future__ import annotations

__all__ = ["SpikemaskError", "SpikemaskWarning"]


class SpikemaskError(ValueError):
    """A user-facing error: bad input, bad configuration, or an unusable file."""


class SpikemaskWarning(UserWarning):
    """Advice about a request that works but is unlikely to give what the user wants (the
    CLI prints it as one ``warning:`` line)."""
