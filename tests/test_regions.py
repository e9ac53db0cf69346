"""Tests for spikemask.data.regions: region vocabularies and Allen -> Beryl / Cosmos groupings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spikemask.data import regions as regions_mod
from spikemask.data.regions import (
    RegionVocabulary,
    group_session,
    map_regions,
    region_mapping,
    unknown_acronyms,
)
from spikemask.data.session import Session, TrialSet
from spikemask.errors import SpikemaskError

STEINMETZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "steinmetz2019"


def make_session(session_id: str, unit_regions: list[str]) -> Session:
    num_units = len(unit_regions)
    spikes = np.arange(3 * 7 * num_units, dtype=np.int64).reshape(3, 7, num_units) % 4
    return Session(
        session_id=session_id,
        bin_size_s=0.02,
        window_start_s=-0.5,
        align_event="stimOn_times",
        unit_ids=tuple(f"u{i}" for i in range(num_units)),
        unit_regions=tuple(unit_regions),
        splits={"train": TrialSet(spikes=spikes, trial_index=np.arange(3))},
    )


# ---------------------------------------------------------------------------- vocabulary
def test_vocabulary_keeps_order_drops_duplicates_and_unlabelled() -> None:
    vocab = RegionVocabulary(["VISp", "root", "CA1", "VISp", "", "VOID", "LGd", "Unknown"])
    assert vocab.names == ("VISp", "CA1", "LGd")
    assert len(vocab) == 3
    assert [vocab.index(n) for n in ("VISp", "CA1", "LGd")] == [0, 1, 2]
    assert "CA1" in vocab
    assert "root" not in vocab
    assert list(vocab) == ["VISp", "CA1", "LGd"]


@pytest.mark.parametrize("name", ["root", "ROOT", "void", "", "nan", "unknown", "None"])
def test_unlabelled_names_index_minus_one(name: str) -> None:
    assert RegionVocabulary(["CA1"]).index(name) == -1


def test_encode_values_and_dtype() -> None:
    vocab = RegionVocabulary(["CA1", "LGd", "VISp"])
    encoded = vocab.encode(["VISp", "root", "CA1", "CA1", "LGd", "void", "VISp"])
    assert encoded.dtype == np.int64
    np.testing.assert_array_equal(encoded, [2, -1, 0, 0, 1, -1, 2])
    assert vocab.encode([]).shape == (0,)


def test_unknown_region_error_names_it_and_known_ones() -> None:
    vocab = RegionVocabulary(["CA1", "LGd", "VISp"])
    with pytest.raises(SpikemaskError, match=r"'MOs' not in the region vocabulary.*'CA1'"):
        vocab.index("MOs")
    with pytest.raises(SpikemaskError, match=r"'MOs', 'SCm'.*extend"):
        vocab.encode(["CA1", "SCm", "MOs", "root", "SCm"])


def test_unknown_region_error_shortens_a_long_known_list() -> None:
    vocab = RegionVocabulary([f"R{i:02d}" for i in range(12)])
    with pytest.raises(SpikemaskError, match=r"known: 'R00', .*'R04', \.\.\. \(7 more\)"):
        vocab.index("X")


@pytest.mark.parametrize(
    ("names", "message"),
    [("VISp", "single string 'VISp'"), (["CA1", 3], "3 is a int; expected a string")],
)
def test_bad_names_are_rejected(names, message: str) -> None:
    with pytest.raises(SpikemaskError, match=message):
        RegionVocabulary(names)


def test_extend_appends_new_names_and_keeps_indices() -> None:
    vocab = RegionVocabulary(["CA1", "LGd"])
    extended = vocab.extend(["SCm", "CA1", "root", "APN"])
    assert extended.names == ("CA1", "LGd", "SCm", "APN")
    assert [extended.index(n) for n in vocab.names] == [0, 1]
    assert vocab.names == ("CA1", "LGd")  # the original is unchanged
    assert vocab.extend("MOs").names == ("CA1", "LGd", "MOs")


def test_json_round_trip() -> None:
    vocab = RegionVocabulary(["VISp", "CA1", "LGd"])
    restored = RegionVocabulary.from_list(json.loads(json.dumps(vocab.to_list())))
    assert restored == vocab
    assert restored.names == ("VISp", "CA1", "LGd")
    assert restored != RegionVocabulary(["CA1", "VISp", "LGd"])


@pytest.mark.parametrize(
    ("saved", "message"),
    [("CA1", "is a str; expected a list"), (["CA1", "CA1"], "duplicate or unlabelled")],
)
def test_from_list_rejects_corrupt_vocabularies(saved, message: str) -> None:
    with pytest.raises(SpikemaskError, match=message):
        RegionVocabulary.from_list(saved)


def test_from_sessions_is_the_sorted_union_over_all_sessions() -> None:
    sessions = [
        make_session("a", ["VISp", "CA1", "root", "CA1"]),
        make_session("b", ["LGd", "CA1", "void"]),
        make_session("c", ["APN", "root"]),  # regions only the last session has
    ]
    vocab = RegionVocabulary.from_sessions(iter(sessions))
    assert vocab.names == ("APN", "CA1", "LGd", "VISp")
    np.testing.assert_array_equal(vocab.encode(sessions[2].unit_regions), [0, -1])


# ---------------------------------------------------------------------------- groupings
# Expected values are what the packaged table says, checked against iblatlas 1.3.0
# (BrainRegions().acronym2acronym(..., mapping="Beryl" / "Cosmos")).
@pytest.mark.parametrize(
    ("acronym", "beryl", "cosmos"),
    [
        ("VISp2/3", "VISp", "Isocortex"),
        ("VISp5", "VISp", "Isocortex"),
        ("VISp", "VISp", "Isocortex"),
        ("CA1", "CA1", "HPF"),
        ("LGd", "LGd", "TH"),
        ("DG-mo", "DG", "HPF"),
        ("SCsg", "SCs", "MB"),
        ("EPd", "EPd", "CTXsp"),
        ("CP", "CP", "CNU"),
        ("CM", "CM", "TH"),  # central medial nucleus; lower-case "cm" is a fibre tract
    ],
)
def test_known_groupings(acronym: str, beryl: str, cosmos: str) -> None:
    assert map_regions([acronym], "beryl") == (beryl,)
    assert map_regions([acronym], "cosmos") == (cosmos,)
    assert region_mapping("beryl")[acronym] == beryl
    assert region_mapping("Cosmos")[acronym] == cosmos


@pytest.mark.parametrize(
    ("acronym", "level", "ibl", "kept"),
    [
        ("ACA", "beryl", "root", "ACA"),
        ("TH", "beryl", "root", "TH"),
        ("MB", "beryl", "root", "MB"),
        ("TH", "cosmos", "TH", "TH"),
        ("CTX", "cosmos", "root", "CTX"),
        ("fiber tracts", "beryl", "root", "root"),
        ("alv", "cosmos", "root", "root"),
        ("cm", "beryl", "root", "root"),
        ("root", "cosmos", "root", "root"),
        ("void", "beryl", "void", "void"),
    ],
)
def test_coarser_structures_keep_their_acronym(acronym, level, ibl, kept) -> None:
    assert map_regions([acronym], level, keep_coarser=False) == (ibl,)
    assert map_regions([acronym], level) == (kept,)


def test_allen_level_is_identity_and_unknown_labels_pass_through() -> None:
    labels = ["VISp2/3", "ca1", "root", "not-a-region", ""]
    assert region_mapping("allen") == {}
    assert map_regions(labels, "allen") == tuple(labels)
    assert map_regions(labels, "beryl") == ("VISp", "ca1", "root", "not-a-region", "")
    assert unknown_acronyms(labels) == ("ca1", "not-a-region")


def test_region_mapping_returns_a_fresh_dict_over_the_whole_table() -> None:
    mapping = region_mapping("beryl")
    assert len(mapping) == 1328
    mapping["CA1"] = "changed"
    assert region_mapping("beryl")["CA1"] == "CA1"
    groups = {g for g in region_mapping("cosmos", keep_coarser=False).values()}
    assert groups == {"CB", "CNU", "CTXsp", "HB", "HPF", "HY", "Isocortex", "MB", "OLF", "TH"} | {
        "root",
        "void",
    }


@pytest.mark.parametrize("level", ["Beryl2", "swanson", ""])
def test_unknown_level_is_rejected(level: str) -> None:
    with pytest.raises(SpikemaskError, match=r"unknown region level.*'allen', 'beryl', 'cosmos'"):
        map_regions(["CA1"], level)
    with pytest.raises(SpikemaskError, match="unknown region level"):
        region_mapping(level)


def test_group_session_maps_regions_and_leaves_input_alone() -> None:
    session = make_session("s", ["VISp2/3", "VISp5", "CA1", "LGd", "root", "weird"])
    grouped = group_session(session, "cosmos")
    assert grouped.unit_regions == ("Isocortex", "Isocortex", "HPF", "TH", "root", "weird")
    assert session.unit_regions[0] == "VISp2/3"
    assert group_session(session, "beryl").unit_regions[:2] == ("VISp", "VISp")
    assert group_session(session, "allen") is session
    np.testing.assert_array_equal(grouped.split("train").spikes, session.split("train").spikes)


def test_table_matches_iblatlas_when_installed() -> None:
    brain_regions = pytest.importorskip("iblatlas.regions").BrainRegions()
    rows = regions_mod._read_table()
    acronyms = [row[0] for row in rows]
    beryl = brain_regions.acronym2acronym(acronyms, mapping="Beryl")
    cosmos = brain_regions.acronym2acronym(acronyms, mapping="Cosmos")
    assert [row[2] for row in rows] == list(beryl)
    assert [row[3] for row in rows] == list(cosmos)


# ---------------------------------------------------------------------------- real data
def steinmetz_regions() -> dict[str, list[str]]:
    if not STEINMETZ.is_dir():
        pytest.skip(f"real data folder {STEINMETZ} is absent (needs ../shared/data)")
    pq = pytest.importorskip("pyarrow.parquet")
    out = {}
    for folder in sorted(STEINMETZ.iterdir()):
        path = folder / "data" / "train-00000-of-00001.parquet"
        table = pq.read_table(path, columns=["cluster_regions"])
        out[folder.name] = table.column("cluster_regions")[0].as_py()
    return out


def test_every_steinmetz_acronym_has_a_beryl_and_cosmos_group() -> None:
    sessions = steinmetz_regions()
    assert len(sessions) == 11
    acronyms = sorted({a for regions in sessions.values() for a in regions} - {"root"})
    assert unknown_acronyms(acronyms) == ()
    cosmos_groups = {"CB", "CNU", "CTXsp", "HB", "HPF", "HY", "Isocortex", "MB", "OLF", "TH"}
    for acronym, group in zip(acronyms, map_regions(acronyms, "cosmos"), strict=True):
        assert group in cosmos_groups, acronym
    for acronym, group in zip(acronyms, map_regions(acronyms, "beryl"), strict=True):
        assert group not in ("root", "void"), acronym
    # Session 4 has 11 Allen labels, all Beryl-level or coarser (TH, ACA kept), so 11 Beryl
    # groups; they fall into 4 Cosmos divisions.
    s04 = sessions["steinmetz2019-s04-forssmann-2017-11-01"]
    assert len(set(map_regions(s04, "beryl"))) == 11
    assert set(map_regions(s04, "cosmos")) == {"Isocortex", "HPF", "TH", "CNU"}


# (Allen, Beryl, Cosmos) labelled-region counts per session, from the packaged table.
STEINMETZ_REGION_COUNTS = {
    "s01": (7, 7, 3),
    "s02": (4, 4, 2),
    "s03": (10, 10, 4),
    "s04": (11, 11, 4),
    "s05": (9, 9, 3),
    "s06": (4, 4, 3),
    "s07": (7, 7, 6),
    "s08": (14, 14, 5),
    "s09": (11, 11, 5),
    "s10": (12, 12, 5),
    "s11": (5, 5, 3),
}


def test_steinmetz_region_counts_per_level() -> None:
    def count(labels) -> int:
        return len({r for r in labels if regions_mod.is_labelled(r)})

    counts = {
        name.split("-")[1]: tuple(count(map_regions(r, lv)) for lv in ("allen", "beryl", "cosmos"))
        for name, r in steinmetz_regions().items()
    }
    assert counts == STEINMETZ_REGION_COUNTS
