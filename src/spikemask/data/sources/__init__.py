"""Preparation of raw sources into sessions.

IBL through the ONE API (:mod:`~spikemask.data.sources.ibl`), NWB files
(:mod:`~spikemask.data.sources.nwb`), brainsets (:mod:`~spikemask.data.sources.brainsets`)
and pynapple objects (:mod:`~spikemask.data.sources.pynapple_io`), with the binning
(:mod:`~spikemask.data.sources.binning`) and unit filters
(:mod:`~spikemask.data.sources.unit_filters`) they share. Each module is imported on demand:
the optional dependencies of one source are not needed by the others.
"""
