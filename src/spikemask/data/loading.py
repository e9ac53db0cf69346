"""Resolve dataset arguments (folders, list files, Hub ids) into sessions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from spikemask.data.parquet import read_session
from spikemask.data.session import Session
from spikemask.errors import SpikemaskError

__all__ = ["expand_sources", "load_session", "load_sessions"]

HUB_PREFIX = "hf://"


def expand_sources(sources: Iterable[str | Path]) -> list[str]:
    """Dataset folders from the command line; a ``.txt`` file lists one folder per line.

    Relative paths inside a list file are relative to that file; blank lines and lines
    starting with ``#`` are ignored.
    """
    expanded: list[str] = []
    for source in sources:
        path = Path(str(source)).expanduser()
        if path.is_file() and path.suffix in {".txt", ".list"}:
            for line in path.read_text().splitlines():
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    item = Path(entry).expanduser()
                    is_hub = entry.startswith(HUB_PREFIX)
                    expanded.append(
                        entry if is_hub or item.is_absolute() else str(path.parent / item)
                    )
        else:
            expanded.append(str(source))
    if not expanded:
        raise SpikemaskError("no dataset given; expected one or more dataset folders")
    return expanded


def _resolve(source: str) -> Path:
    if not source.startswith(HUB_PREFIX):
        return Path(source).expanduser()
    repo_id = source[len(HUB_PREFIX) :]
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise SpikemaskError(
            f"{source!r} names a Hugging Face Hub dataset; install the optional extra: "
            "pip install 'spikemask[hub]'"
        ) from None
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=["data/*"]))
    except Exception as err:  # network / auth errors of all kinds
        raise SpikemaskError(f"could not download dataset {source!r} from the Hub: {err}") from None


def load_session(source: str | Path, *, region_level: str = "allen", cache: bool = True) -> Session:
    """Load one session from a dataset folder or ``hf://<org>/<dataset>``.

    Args:
        source: Folder in the IBL parquet layout, or a Hugging Face Hub dataset id
            prefixed with ``hf://`` (needs the ``hub`` extra and a network connection).
        region_level: ``allen`` keeps recorded acronyms; ``beryl`` / ``cosmos`` group them.
        cache: Use the decoded-counts cache.
    """
    session = read_session(_resolve(str(source)), cache=cache)
    if region_level != "allen":
        from spikemask.data.regions import group_session

        session = group_session(session, region_level)
    return session


def load_sessions(
    sources: Sequence[str | Path], *, region_level: str = "allen", cache: bool = True
) -> list[Session]:
    """Load several sessions; two folders holding the same session id are an error."""
    sessions = [
        load_session(s, region_level=region_level, cache=cache) for s in expand_sources(sources)
    ]
    seen: dict[str, str] = {}
    for session in sessions:
        source = str(session.metadata.get("source", "?"))
        if session.session_id in seen:
            raise SpikemaskError(
                f"session id {session.session_id!r} appears twice ({seen[session.session_id]!r} "
                f"and {source!r}); expected each session once"
            )
        seen[session.session_id] = source
    return sessions
