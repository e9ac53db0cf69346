"""Sessions and the readers / writers that produce them.

``Session`` / ``TrialSet`` (the in-memory form), ``read_session`` / ``write_session`` (the
IBL parquet layout), ``load_session`` (folders and Hub ids, optional region grouping),
``RegionVocabulary``. The raw sources (IBL, NWB, brainsets, pynapple: ``spikemask.data.sources``)
and the synthetic generator (``spikemask.data.synthetic``) are imported on demand.
"""

from spikemask.data.loading import load_session, load_sessions
from spikemask.data.parquet import read_session, write_session
from spikemask.data.regions import RegionVocabulary
from spikemask.data.session import SPLITS, Session, TrialSet

__all__ = [
    "SPLITS",
    "RegionVocabulary",
    "Session",
    "TrialSet",
    "load_session",
    "load_sessions",
    "read_session",
    "write_session",
]
