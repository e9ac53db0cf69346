"""ONE access for :mod:`spikemask.data.sources.ibl`: find datasets, load probes, trials, behaviour.

Everything goes through ``one.list_datasets(eid)`` (the session's dataset list, which the
public server and a local cache both answer) and ``one.load_dataset(eid, name,
collection=...)`` (which downloads when online), so the same code runs remote and offline.
The ONE API is imported lazily: importing spikemask never needs it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spikemask.data.sources import binning
from spikemask.errors import SpikemaskError

if TYPE_CHECKING:
    from spikemask.data.sources.ibl import IBLPrepareConfig

PUBLIC_BASE_URL = "https://openalyx.internationalbrainlab.org"
PUBLIC_PASSWORD = "international"  # the documented password of the public IBL server

# <namespace?><object>.<attribute>[.<extra>].<extension>, e.g. _ibl_trials.table.pqt
_ALF_NAME = re.compile(
    r"^(?:_[^_.]+_)?(?P<object>[^._]+)\.(?P<attribute>[^.]+)(?:\.[^.]+)*\.[^.]+$"
)
_PROBE_COLLECTION = re.compile(r"^alf/(?P<probe>[^/]+?)(?:/(?P<sorter>[^/]+))?$")

#: (collection, object) -> attribute -> file name
DatasetIndex = dict[tuple[str, str], dict[str, str]]


def make_one(
    cache_dir: str | Path | None = None,
    *,
    base_url: str | None = None,
    password: str | None = None,
    local: bool = False,
) -> Any:
    """See :func:`spikemask.data.sources.ibl.make_one`."""
    try:
        from one.api import ONE, One
    except ImportError:
        raise SpikemaskError(
            "the IBL pipeline needs the ONE API; install it with pip install 'spikemask[ibl]'"
        ) from None
    if local:
        root = Path(cache_dir).expanduser() if cache_dir is not None else None
        if root is None or not root.is_dir():
            raise SpikemaskError(
                f"ONE cache folder {str(root)!r} not found; expected a folder of ALF sessions"
            )
        if not (root / "sessions.pqt").exists():
            from one.alf.cache import make_parquet_db

            make_parquet_db(root, hash_ids=True, hash_files=False)
        return One(cache_dir=str(root), mode="local")
    url = base_url or PUBLIC_BASE_URL
    options: dict[str, Any] = {"base_url": url, "silent": True}
    if password or url == PUBLIC_BASE_URL:
        options["password"] = password or PUBLIC_PASSWORD
    if cache_dir is not None:
        options["cache_dir"] = str(Path(cache_dir).expanduser())
    return ONE(**options)


def session_index(one: Any, eid: Any) -> tuple[str, DatasetIndex]:
    """The resolved eid and its datasets, indexed by (collection, object) -> attribute."""
    where = f"the ONE cache at {str(getattr(one, 'cache_dir', '?'))!r}"
    try:
        resolved = one.to_eid(eid)
    except ValueError:
        resolved = None
    datasets = [] if resolved is None else one.list_datasets(resolved)
    if hasattr(datasets, "columns"):  # some ONE versions answer an empty DataFrame
        datasets = list(datasets["rel_path"]) if "rel_path" in datasets.columns else []
    if len(datasets) == 0:
        raise SpikemaskError(f"unknown eid {str(eid)!r}: no such session (no datasets) in {where}")
    index: DatasetIndex = {}
    for rel_path in datasets:
        parts = [p for p in str(rel_path).split("/") if not p.startswith("#")]  # drop revisions
        match = _ALF_NAME.match(parts[-1])
        if match:
            key = ("/".join(parts[:-1]), match["object"])
            index.setdefault(key, {}).setdefault(match["attribute"], parts[-1])
    return str(resolved), index


def load_object(
    one: Any, eid: str, index: DatasetIndex, collection: str, obj: str, attributes: tuple
) -> dict[str, np.ndarray]:
    """The listed attributes of one ALF object that exist (a ``table`` is expanded)."""
    files = index.get((collection, obj), {})
    out: dict[str, np.ndarray] = {}
    ordered = sorted(files.items(), key=lambda item: item[0] != "table")  # table first
    check = not getattr(one, "offline", False)  # offline: nothing to re-download; md5 is slow
    for attribute, filename in ordered:
        if attribute != "table" and attribute not in attributes:
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*default revision.*")
            value = one.load_dataset(eid, filename, collection=collection, check_hash=check)
        if attribute == "table" and hasattr(value, "columns"):
            out.update({c: value[c].to_numpy() for c in value.columns if c in attributes})
        elif hasattr(value, "columns"):  # e.g. clusters.uuids.csv
            out[attribute] = value[value.columns[0]].to_numpy()
        else:
            out[attribute] = np.asarray(value)
    return out


def _collection_of(index: DatasetIndex, obj: str, preferred: str) -> str | None:
    found = sorted(c for c, o in index if o == obj)
    return preferred if preferred in found else (found[0] if found else None)


def probe_collections(index: DatasetIndex, config: IBLPrepareConfig) -> dict[str, str]:
    """probe label -> the collection of its preferred spike sorting."""
    options: dict[str, list[tuple[int, str, str]]] = {}
    for collection, obj in index:
        match = _PROBE_COLLECTION.match(collection)
        if obj != "spikes" or match is None or "times" not in index[(collection, obj)]:
            continue
        probe, sorter = match["probe"], match["sorter"] or ""
        if config.probes is not None and probe not in config.probes:
            continue
        rank = config.spike_sorters.index(sorter) if sorter in config.spike_sorters else 99
        options.setdefault(probe, []).append((rank, sorter, collection))
    return {probe: min(found)[2] for probe, found in sorted(options.items())}


# ---------------------------------------------------------------------------- probes
@dataclass
class Population:
    """All probes merged: spike times with unit indices into the unit tables."""

    times: np.ndarray
    units: np.ndarray
    unit_ids: tuple[str, ...]
    regions: tuple[str, ...]
    depths: np.ndarray
    probes: tuple[str, ...]
    recording_s: tuple[float, float]
    labels: np.ndarray | None = None  # (N,) IBL QC label; None when a probe has none
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def load_population(
    one: Any, eid: str, index: DatasetIndex, config: IBLPrepareConfig
) -> Population:
    """Load and merge the spike sorting of every probe of the session."""
    probes = probe_collections(index, config)
    if not probes:
        raise SpikemaskError(
            f"session {eid} has no spike sorting (no alf/<probe>/.../spikes.times dataset"
            + (f" for probes {list(config.probes)}" if config.probes else "")
            + "); expected at least one sorted probe"
        )
    parts, offset, notes = [], 0, []
    for probe, collection in probes.items():
        part = _load_probe(one, eid, index, probe, collection, config, notes)
        parts.append((part[0], part[1] + offset, *part[2:]))
        offset += len(part[2])
    first = max(float(p[0].min()) for p in parts)  # windows must lie inside every probe
    last = min(float(p[0].max()) for p in parts)
    return Population(
        times=np.concatenate([p[0] for p in parts]),
        units=np.concatenate([p[1] for p in parts]),
        unit_ids=tuple(u for p in parts for u in p[2]),
        regions=tuple(r for p in parts for r in p[3]),
        depths=np.concatenate([p[4] for p in parts]),
        probes=tuple(probes),
        recording_s=(first, last),
        labels=None if any(p[5] is None for p in parts) else np.concatenate([p[5] for p in parts]),
        notes=notes,
        metadata={k: v for k, v in _session_details(one, eid).items() if v},
    )


def _load_probe(
    one: Any,
    eid: str,
    index: DatasetIndex,
    probe: str,
    collection: str,
    config: IBLPrepareConfig,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray, np.ndarray | None]:
    spikes = load_object(one, eid, index, collection, "spikes", ("times", "clusters"))
    if "clusters" not in spikes or len(spikes["times"]) != len(spikes["clusters"]):
        raise SpikemaskError(
            f"session {eid}, {collection}: spikes.times and spikes.clusters missing or of "
            "different lengths; expected one cluster id per spike"
        )
    if len(spikes["times"]) == 0:
        raise SpikemaskError(f"session {eid}, {collection}: no spikes; expected a sorted probe")
    cluster_of_spike = spikes["clusters"].astype(np.int64)
    cluster_ids, units = np.unique(cluster_of_spike, return_inverse=True)
    attributes = ("channels", "depths", "uuids", "acronym", "brainLocationAcronyms_ccf_2017")
    clusters = load_object(one, eid, index, collection, "clusters", attributes)
    for name, values in clusters.items():
        if len(values) <= cluster_ids[-1]:
            raise SpikemaskError(
                f"session {eid}, {collection}: clusters.{name} has {len(values)} rows but spikes "
                f"reference cluster {cluster_ids[-1]}; expected one row per cluster"
            )
    if "uuids" in clusters:
        unit_ids = [str(u) for u in clusters["uuids"][cluster_ids]]
    else:
        unit_ids = [f"{probe}-{c}" for c in cluster_ids]
    depths = clusters.get("depths", np.full(cluster_ids[-1] + 1, np.nan))[cluster_ids]
    regions = _regions(one, eid, index, (probe, collection), clusters, cluster_ids, config, notes)
    labels = _qc_labels(one, eid, index, collection, cluster_ids)
    times = spikes["times"].astype(np.float64)
    return times, units, unit_ids, regions, depths.astype(float), labels


def _qc_labels(
    one: Any, eid: str, index: DatasetIndex, collection: str, cluster_ids: np.ndarray
) -> np.ndarray | None:
    """(N,) IBL QC label (``clusters.metrics`` column ``label``) of the given clusters.

    Rows are matched by the table's ``cluster_id`` column when it has one, else by row
    number. None when the sorting has no metrics table or the table no ``label`` column.
    """
    filename = index.get((collection, "clusters"), {}).get("metrics")
    if filename is None:
        return None
    check = not getattr(one, "offline", False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*default revision.*")
        metrics = one.load_dataset(eid, filename, collection=collection, check_hash=check)
    if not hasattr(metrics, "columns") or "label" not in metrics.columns:
        return None
    label = metrics["label"].to_numpy(dtype=np.float64)
    if "cluster_id" in metrics.columns:
        by_id = dict(zip(metrics["cluster_id"].to_numpy().astype(np.int64), label, strict=True))
        return np.array([by_id.get(int(c), np.nan) for c in cluster_ids])
    if len(label) <= cluster_ids[-1]:
        raise SpikemaskError(
            f"session {eid}, {collection}: clusters.metrics has {len(label)} rows but spikes "
            f"reference cluster {cluster_ids[-1]}; expected one row per cluster"
        )
    return label[cluster_ids]


def _regions(
    one: Any,
    eid: str,
    index: DatasetIndex,
    probe_collection: tuple[str, str],
    clusters: dict[str, np.ndarray],
    cluster_ids: np.ndarray,
    config: IBLPrepareConfig,
    notes: list[str],
) -> list[str]:
    """Allen acronym of every cluster: per-cluster acronyms, else those of its channel."""
    probe, collection = probe_collection
    for name in ("acronym", "brainLocationAcronyms_ccf_2017"):
        if name in clusters:
            return _map_acronyms(clusters[name][cluster_ids].astype(str), config)
    wanted = ("acronym", "brainLocationAcronyms_ccf_2017", "brainLocationIds_ccf_2017")
    channels: dict[str, np.ndarray] = {}
    for where in (collection, f"alf/{probe}"):  # histology sits by the sorting or the probe
        channels = load_object(one, eid, index, where, "channels", wanted)
        if channels:
            break
    if channels and "channels" not in clusters:
        raise SpikemaskError(
            f"session {eid}, {collection}: channels carry histology but clusters.channels is "
            "missing; expected the channel of every cluster"
        )
    if channels:
        channel = clusters["channels"][cluster_ids].astype(np.int64)
        for name in wanted[:2]:
            if name in channels:
                return _map_acronyms(channels[name][channel].astype(str), config)
        return _atlas_acronyms(channels[wanted[2]][channel], config.region_mapping)
    if config.allow_unlabelled:
        notes.append(f"{probe}: no histology; its units are labelled 'unknown'")
        return ["unknown"] * len(cluster_ids)
    raise SpikemaskError(
        f"session {eid}, {collection}: no histology (channels.brainLocationIds_ccf_2017 or "
        "acronyms); expected region labels, or set allow_unlabelled to label units 'unknown'"
    )


def _brain_regions() -> Any:
    try:
        from iblatlas.regions import BrainRegions
    except ImportError:
        raise SpikemaskError(
            "this session's histology has only Allen atlas ids "
            "(channels.brainLocationIds_ccf_2017) or asks for a Beryl/Cosmos mapping; install "
            "iblatlas (pip install iblatlas) to map them to acronyms"
        ) from None
    return BrainRegions()


def _atlas_acronyms(atlas_ids: np.ndarray, mapping: str) -> list[str]:
    regions = _brain_regions()
    return [str(a) for a in regions.id2acronym(np.asarray(atlas_ids, dtype=np.int64), mapping)]


def _map_acronyms(acronyms: np.ndarray, config: IBLPrepareConfig) -> list[str]:
    if config.region_mapping == "Allen":
        return [str(a) for a in acronyms]
    regions = _brain_regions()
    return [str(a) for a in regions.acronym2acronym(acronyms, mapping=config.region_mapping)]


def _session_details(one: Any, eid: str) -> dict[str, str]:
    try:
        path = Path(str(one.eid2path(eid)))
    except Exception:  # details are optional metadata; never fail a prepare over them
        return {}
    # <lab>/Subjects/<subject>/<date>/<number>
    parts = path.parts
    return {"subject": parts[-3], "lab": parts[-5]} if len(parts) >= 5 else {}


# ---------------------------------------------------------------------------- trials, behaviour
def load_trials(
    one: Any, eid: str, index: DatasetIndex, config: IBLPrepareConfig
) -> dict[str, np.ndarray]:
    """The session's trials (table and/or per-attribute files), field -> (K,) array."""
    collection = _collection_of(index, "trials", config.task_collection)
    if collection is None:
        raise SpikemaskError(
            f"session {eid} has no trials datasets (alf/_ibl_trials.*); expected a trials table"
        )
    wanted = (
        *config.required_fields,
        config.align_event,
        "stimOn_times",
        "goCue_times",
        "feedback_times",
        "firstMovement_times",
        "contrastLeft",
        "contrastRight",
    )
    trials = load_object(one, eid, index, collection, "trials", wanted)
    lengths = {len(v) for v in trials.values()}
    if not trials or len(lengths) != 1:
        raise SpikemaskError(
            f"session {eid}, {collection}: trials fields missing or of different lengths "
            f"({sorted(lengths)}); expected one value per trial in every field"
        )
    return trials


def load_bin_behavior(
    one: Any,
    eid: str,
    index: DatasetIndex,
    edges: np.ndarray,
    config: IBLPrepareConfig,
    notes: list[str],
) -> dict[str, np.ndarray]:
    """Per-bin ``wheel-speed`` and ``whisker-motion-energy`` (K, T) where the data exist."""
    out: dict[str, np.ndarray] = {}
    where = _collection_of(index, "wheel", config.task_collection)
    wheel = load_object(one, eid, index, where or "", "wheel", ("position", "timestamps"))
    if len(wheel) == 2:
        out["wheel-speed"] = binning.wheel_speed(
            wheel["timestamps"], wheel["position"], edges, config.bin_size_s
        )
    else:
        _missing(eid, "wheel.position/timestamps: no wheel-speed", config, notes)
    camera = f"{config.camera}Camera"
    where = _collection_of(index, camera, config.task_collection)
    video = load_object(one, eid, index, where or "", camera, ("ROIMotionEnergy", "times"))
    if len(video) == 2:
        size = min(len(video["times"]), len(video["ROIMotionEnergy"]))
        if len(video["times"]) != len(video["ROIMotionEnergy"]):
            notes.append(f"{camera}: times and ROIMotionEnergy lengths differ; cut to {size}")
        out["whisker-motion-energy"] = binning.sample_at_bin_ends(
            video["times"][:size], video["ROIMotionEnergy"][:size], edges
        )
    else:
        _missing(eid, f"{camera}.ROIMotionEnergy/times: no whisker-motion-energy", config, notes)
    return out


def _missing(eid: str, what: str, config: IBLPrepareConfig, notes: list[str]) -> None:
    if config.require_behavior:
        raise SpikemaskError(f"session {eid}: missing {what}; expected it (require_behavior)")
    notes.append(f"missing {what}")
