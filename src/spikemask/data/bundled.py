"""The real recording session shipped inside the package (Steinmetz et al. 2019, CC BY 4.0)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from spikemask.data.session import Session

__all__ = ["BUNDLED_SESSION_ID", "bundled_session", "bundled_session_dir"]

BUNDLED_SESSION_ID = "steinmetz2019-s03-cori-2016-12-18"

CITATION = (
    "Steinmetz, Zatka-Haas, Carandini & Harris (2019), Distributed coding of choice, action "
    "and engagement across the mouse brain, Nature 576:266; data CC BY 4.0, "
    "doi:10.6084/m9.figshare.9598406"
)


def bundled_session_dir() -> Path:
    """Folder of the shipped session in the IBL parquet layout."""
    return Path(str(resources.files("spikemask") / "assets" / BUNDLED_SESSION_ID))


def bundled_session(*, cache: bool = True) -> Session:
    """Load the shipped real session (619 units, 11 regions, 228 trials)."""
    from spikemask.data.parquet import read_session

    return read_session(bundled_session_dir(), cache=cache)
