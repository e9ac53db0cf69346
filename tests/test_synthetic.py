"""The synthetic generator: determinism, the on-disk layout, ground truth and plausibility."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import gammaln

from spikemask.data.parquet import read_session
from spikemask.data.session import SPLITS
from spikemask.data.synthetic import (
    SyntheticConfig,
    generate_sessions,
    load_true_rates,
    synthesize,
    write_synthetic,
)
from spikemask.errors import SpikemaskError

SMALL = SyntheticConfig(
    num_regions=4,
    latent_dim=3,
    units_per_region=(9, 13),
    num_trials=(61, 71),
    num_bins=37,
    window_start_s=-0.3,
)
ONSET_BIN = 15  # 0.3 s / 0.02 s


@pytest.fixture(scope="module")
def sessions():
    return generate_sessions(4, seed=11, config=SMALL)


@pytest.fixture(scope="module")
def written(sessions, tmp_path_factory):
    """The first two sessions written to disk: their folders."""
    return write_synthetic(sessions[:2], tmp_path_factory.mktemp("synthetic"))


def _all_trials(item, name: str) -> np.ndarray:
    """A per-trial behaviour value over all splits, in split order."""
    return np.concatenate([item.session.split(s).trial_behavior[name] for s in SPLITS])


def _poisson_nll(rates: np.ndarray, counts: np.ndarray) -> np.ndarray:
    rates = np.maximum(rates, 1e-9)
    return rates - counts * np.log(rates) + gammaln(counts + 1)


def _bits_per_spike(rates: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """(pooled, mean over units) bps vs the per-unit mean-rate null, from the definition."""
    n = counts.shape[-1]
    y = counts.reshape(-1, n).astype(np.float64)
    r = rates.reshape(-1, n).astype(np.float64)
    null = np.broadcast_to(y.mean(0), y.shape)
    gain = _poisson_nll(null, y).sum(0) - _poisson_nll(r, y).sum(0)  # (N,)
    spikes = y.sum(0)
    pooled = gain.sum() / (spikes.sum() * math.log(2))
    fired = spikes > 0
    return float(pooled), float(np.mean(gain[fired] / (spikes[fired] * math.log(2))))


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_the_same_data_and_another_seed_does_not():
    first = generate_sessions(2, seed=5, config=SMALL)
    again = generate_sessions(2, seed=5, config=SMALL)
    other = generate_sessions(1, seed=6, config=SMALL)[0]
    for a, b in zip(first, again, strict=True):
        assert a.session.unit_ids == b.session.unit_ids
        for split in SPLITS:
            np.testing.assert_array_equal(
                a.session.split(split).spikes, b.session.split(split).spikes
            )
            np.testing.assert_array_equal(a.true_rates[split], b.true_rates[split])
            np.testing.assert_array_equal(a.latents[split], b.latents[split])
            behaviour = a.session.split(split).bin_behavior["wheel-speed"]
            np.testing.assert_array_equal(
                behaviour, b.session.split(split).bin_behavior["wheel-speed"]
            )
    assert not np.array_equal(first[0].latents["train"][:5], other.latents["train"][:5])
    assert first[0].session.session_id != other.session.session_id


def test_asking_for_more_sessions_keeps_the_first_ones():
    one = generate_sessions(1, seed=5, config=SMALL)[0]
    first_of_two = generate_sessions(2, seed=5, config=SMALL)[0]
    np.testing.assert_array_equal(
        one.session.split("test").spikes, first_of_two.session.split("test").spikes
    )


def test_written_output_is_byte_identical_for_the_same_seed(tmp_path):
    dirs = [synthesize(tmp_path / name, num_sessions=1, seed=3, config=SMALL) for name in "ab"]
    files = [sorted(p.relative_to(tmp_path / n) for p in (tmp_path / n).rglob("*") if p.is_file())
             for n in "ab"]  # fmt: skip
    assert files[0] == files[1] and len(files[0]) == 3 + 3 + 3 + 1
    for rel in files[0]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert [d.name for d in dirs[0]] == ["synth-3-00"]


# ----------------------------------------------------------------------------- disk layout
def test_written_sessions_read_back_identically(sessions, written):
    for item, folder in zip(sessions[:2], written, strict=True):
        assert (folder / "data" / "test-00000-of-00001.parquet").is_file()
        back = read_session(folder, cache=False)
        assert back.session_id == item.session.session_id
        assert back.unit_regions == item.session.unit_regions
        assert back.unit_ids == item.session.unit_ids
        assert back.window_start_s == SMALL.window_start_s and back.bin_size_s == 0.02
        rates = load_true_rates(folder)
        for split in SPLITS:
            np.testing.assert_array_equal(
                back.split(split).spikes, item.session.split(split).spikes
            )
            np.testing.assert_array_equal(
                back.split(split).trial_behavior["choice"],
                item.session.split(split).trial_behavior["choice"],
            )
            assert rates[split].dtype == np.float32
            assert rates[split].shape == back.split(split).spikes.shape
            np.testing.assert_array_equal(rates[split], item.true_rates[split])
        assert load_true_rates(folder / "data")["val"].shape == rates["val"].shape


def test_missing_truth_and_overwrites_are_refused(tmp_path, sessions):
    folder = write_synthetic(sessions[:1], tmp_path / "out")[0]
    with pytest.raises(SpikemaskError, match="not an empty folder"):
        synthesize(tmp_path / "out", num_sessions=1, seed=0, config=SMALL)
    with pytest.raises(SpikemaskError, match="already exists and is not empty"):
        write_synthetic(sessions[:1], tmp_path / "out")
    for path in (folder / "truth").glob("*"):
        path.unlink()
    (folder / "truth").rmdir()
    with pytest.raises(SpikemaskError, match="has no truth/ folder"):
        load_true_rates(folder)


# ----------------------------------------------------------------------------- ground truth
def test_true_rates_give_positive_oracle_bits_per_spike(sessions):
    for item in sessions:
        counts = item.session.split("test").spikes
        rates = item.true_rates["test"]
        pooled, per_unit = _bits_per_spike(rates, counts)
        assert pooled > 0.15 and per_unit > 0.15
        # shuffling trials keeps every unit's rate distribution but breaks the single-trial match
        shuffled = rates[np.random.default_rng(0).permutation(len(rates))[::-1]]
        assert _bits_per_spike(shuffled, counts)[0] < pooled - 0.2


def test_firing_rates_are_plausible(sessions):
    for item in sessions:
        assert 0.5 < item.session.mean_rate_hz() < 20.0
        rates = np.concatenate([item.true_rates[s] for s in SPLITS])  # spikes / bin
        unit_hz = rates.mean((0, 1)) / SMALL.bin_size_s
        assert np.mean((unit_hz >= 0.5) & (unit_hz <= 20.0)) >= 0.8
        assert rates.max() <= SMALL.max_rate_hz * SMALL.bin_size_s + 1e-6


def test_units_of_a_region_share_its_latents(sessions):
    for item in sessions:
        rates = np.concatenate([item.true_rates[s] for s in SPLITS])
        log_rates = np.log(rates.reshape(-1, rates.shape[-1]))  # single-trial, (K*T, N)
        corr = np.abs(np.corrcoef(log_rates.T))
        regions = np.array(item.session.unit_regions)
        same = regions[:, None] == regions[None, :]
        off_diagonal = ~np.eye(len(regions), dtype=bool)
        within = corr[same & off_diagonal].mean()
        between = corr[~same].mean()
        assert within > between + 0.1


def test_sensory_responses_are_stimulus_locked(sessions):
    for item in sessions:
        rates = np.concatenate([item.true_rates[s] for s in SPLITS])
        regions = np.array(item.session.unit_regions)
        psth = rates[:, :, regions == "VISp"].mean(0)  # (T, N_VISp)
        before, after = psth[:ONSET_BIN].mean(0), psth[ONSET_BIN : ONSET_BIN + 15].mean(0)
        early, late = psth[:7].mean(0), psth[8:ONSET_BIN].mean(0)
        assert np.mean(np.abs(np.log(after / before))) > 3 * np.mean(np.abs(np.log(late / early)))


def test_sessions_differ_in_units_but_share_the_dynamics(sessions):
    names = set(SMALL.region_names)
    unit_ids = [set(item.session.unit_ids) for item in sessions]
    assert all(a.isdisjoint(b) for i, a in enumerate(unit_ids) for b in unit_ids[i + 1 :])
    subsets = {item.session.region_names for item in sessions}
    assert len(subsets) > 1 and {len(s) for s in subsets} <= {3, 4}
    assert all({"LGd", "VISp"} <= set(s) <= names for s in subsets)  # the shared core
    assert len({item.session.num_units for item in sessions}) > 1
    assert all(item.truth["edges"] == sessions[0].truth["edges"] for item in sessions)
    # the same dynamics give the same trial-averaged latent trajectory in every animal
    mean_latents = [np.concatenate([i.latents[s] for s in SPLITS]).mean(0) for i in sessions]
    other = generate_sessions(1, seed=12, config=SMALL)[0]
    other_mean = np.concatenate([other.latents[s] for s in SPLITS]).mean(0)
    same_corr = np.corrcoef(mean_latents[0].ravel(), mean_latents[1].ravel())[0, 1]
    other_corr = np.corrcoef(mean_latents[0].ravel(), other_mean.ravel())[0, 1]
    assert same_corr > 0.9 and other_corr < same_corr - 0.2
    assert sessions[0].session.metadata["source"] == "synthetic"
    assert sessions[2].session.metadata["subject"] == "synth-02"


def test_choice_follows_the_stimulus_and_behaviour_is_consistent(sessions):
    choice = np.concatenate([_all_trials(item, "choice") for item in sessions])
    left = np.concatenate([_all_trials(item, "contrast_left") for item in sessions])
    right = np.concatenate([_all_trials(item, "contrast_right") for item in sessions])
    reward = np.concatenate([_all_trials(item, "reward") for item in sessions])
    block = np.concatenate([_all_trials(item, "block") for item in sessions])
    side = np.sign(right - left)
    shown = side != 0
    assert set(np.unique(choice)) == {-1.0, 1.0}
    assert np.mean(choice[shown] == side[shown]) > 0.6
    assert np.all(reward[shown] == (choice[shown] == side[shown]))
    assert set(np.unique(block)) <= {0.2, 0.5, 0.8}
    assert np.all((left == 0) | (right == 0))
    for item in sessions:
        trials = item.session.split("train")
        wheel = trials.bin_behavior["wheel-speed"]
        assert wheel.dtype == np.float32 and wheel.min() >= 0
        assert wheel[:, ONSET_BIN + 10 :].mean() > 5 * wheel[:, :ONSET_BIN].mean()
        assert trials.bin_behavior["whisker-motion-energy"].min() > 0


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_regions": 2}, "num_regions=2; expected 3 to 12"),
        ({"num_regions": 13}, "num_regions=13"),
        ({"min_regions_per_session": 6}, "min_regions_per_session <= num_regions"),
        ({"core_regions": 4}, "core_regions <= min_regions_per_session"),
        ({"units_per_region": (5, 2)}, r"units_per_region=\(5, 2\); expected \(low, high\)"),
        ({"num_trials": (3, 5)}, "num_trials=.*10 <= low"),
        ({"latent_dim": 0}, "latent_dim=0; expected >= 1"),
        ({"bin_size_s": -0.01}, "bin_size_s=-0.01; expected > 0"),
        ({"mean_rate_hz": 0.0}, "mean_rate_hz=0.0"),
        ({"max_rate_hz": 3.0}, "max_rate_hz=3.0; expected > mean_rate_hz"),
        ({"window_start_s": 0.1}, "contains the stimulus onset"),
        ({"num_bins": 10, "window_start_s": -0.5}, "contains the stimulus onset"),
        ({"time_constant_s": 0.01}, "time_constant_s=0.01; expected >= bin_size_s"),
        ({"latent_noise": -1.0}, "latent_noise=-1.0; expected >= 0"),
        ({"split_fractions": (0.7, 0.3, 0.0)}, "split_fractions=.*summing to 1"),
        ({"split_fractions": (0.5, 0.1, 0.1)}, "split_fractions"),
        ({"num_regions": "5"}, "num_regions='5'; expected int"),
        ({"latent_dim": 2.5}, "latent_dim=2.5; expected int"),
        ({"units_per_region": (5.5, 9)}, "units_per_region=.*expected tuple"),
        ({"align_event": ""}, "align_event=''; expected str"),
    ],
)
def test_bad_configs_are_refused_with_a_clear_message(changes, message):
    with pytest.raises(SpikemaskError, match=message):
        SyntheticConfig(**changes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_sessions": 0, "seed": 0}, "num_sessions=0; expected an integer >= 1"),
        ({"num_sessions": 1, "seed": -3}, "seed=-3; expected an integer >= 0"),
        ({"num_sessions": 1, "seed": 1.5}, "seed=1.5"),
        ({"num_sessions": True, "seed": 0}, "num_sessions=True"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(SpikemaskError, match=message):
        generate_sessions(kwargs.pop("num_sessions"), config=SMALL, **kwargs)


def test_config_is_recorded_in_the_truth(written):
    truth = json.loads(Path(written[1] / "truth" / "truth.json").read_text())
    assert truth["seed"] == 11 and truth["session_index"] == 1
    assert truth["config"]["num_bins"] == 37 and truth["config"]["units_per_region"] == [9, 13]
    assert {"source": "LGd", "target": "VISp", "strength": 1.5} in truth["edges"]
    assert set(truth["recorded_regions"]) == set(read_session(written[1], cache=False).region_names)
