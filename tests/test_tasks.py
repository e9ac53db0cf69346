"""Activity tasks: plans, the batched runner against one forward pass per unit, scoring."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from spikemask.api import TrainedModel
from spikemask.config import run_preset
from spikemask.data.regions import RegionVocabulary
from spikemask.data.session import Session
from spikemask.errors import SpikemaskError
from spikemask.evaluation.metrics import (
    bits_per_spike_per_unit,
    bits_per_spike_pooled,
    poisson_d2_per_unit,
    poisson_d2_pooled,
)
from spikemask.evaluation.runner import _chunks, _Job, plan_jobs, predict_task
from spikemask.evaluation.tasks import plan_task, score_task, to_jsonable
from spikemask.masking import SCHEMES
from spikemask.models import ModelConfig, build_model
from spikemask.training.checkpoint import Checkpoint, SessionInfo

from conftest import make_session

REGIONS = ("VISp", "CA1", "root", "LGd")  # "root" = unlabelled


def tiny_session(**kwargs) -> Session:
    kwargs.setdefault("regions", REGIONS)
    return make_session(**kwargs)


def tiny_model(*sessions: Session, seed: int = 0, **overrides) -> TrainedModel:
    """A random-weights NDT1 (eval mode) that knows ``sessions``."""
    fields = {"width": 32, "num_layers": 2, "num_heads": 2, "mlp_width": 48, "stitch_width": 24}
    config = run_preset("small")
    config = dataclasses.replace(config, model=ModelConfig(**{**fields, **overrides}))
    model = build_model(
        config.model,
        sessions={s.session_id: s.num_units for s in sessions},
        num_prompts=len(SCHEMES),
        generator=torch.Generator().manual_seed(seed),
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # larger random weights, so that units and bins differ clearly
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    infos = {s.session_id: SessionInfo(s.session_id, s.unit_ids, s.unit_regions) for s in sessions}
    regions = RegionVocabulary.from_sessions(sessions)
    return TrainedModel(Checkpoint(model, config, infos, regions))


def reference_rates(model, session, hidden_of_unit, *, scheme, causal=False) -> np.ndarray:
    """One forward pass per unit: rates of unit n with ``hidden_of_unit(n)`` (T, N) hidden."""
    spikes = session.split("test").spikes
    num_trials, num_bins, num_units = spikes.shape
    rates = np.full(spikes.shape, np.nan)
    for n in range(num_units):
        hidden_tn = hidden_of_unit(n)
        if hidden_tn is None:
            continue
        hidden = torch.as_tensor(hidden_tn).expand(num_trials, num_bins, num_units)
        (out,) = model.forward(
            spikes, session, hidden=hidden, prompt=model.prompt_for(scheme), causal=causal
        )
        rates[:, :, n] = out.log_rates[:, :, n].exp().numpy()
    return rates


def hider_of_one_unit(session: Session):
    """For :func:`reference_rates`: unit n's (T, N) mask hides unit n in every bin."""

    def hide_unit(n):
        hidden = np.zeros((session.num_bins, session.num_units), dtype=bool)
        hidden[:, n] = True
        return hidden

    return hide_unit


@pytest.fixture(scope="module")
def session() -> Session:
    return tiny_session(trials=(9, 4, 5))


@pytest.fixture(scope="module")
def model(session) -> TrainedModel:
    return tiny_model(session)


@pytest.mark.parametrize(("fast", "batch_size"), [(True, 4), (False, 7)])
def test_co_smoothing_equals_one_forward_pass_per_unit(session, model, fast, batch_size):
    expected = reference_rates(model, session, hider_of_one_unit(session), scheme="neuron")
    plan = plan_task(session, "co-smoothing")
    rates = predict_task(model, session, plan, batch_size=batch_size, fast=fast)
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)
    assert np.ptp(expected.mean(axis=(0, 1))) > 0.01  # units really differ


def test_co_smoothing_of_ndt2_equals_one_forward_pass_per_unit(session):
    model = tiny_model(session, architecture="ndt2", patch_size=4)

    expected = reference_rates(model, session, hider_of_one_unit(session), scheme="neuron")
    rates = predict_task(model, session, plan_task(session, "co-smoothing"), batch_size=6)
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scaling", ["sqrt", "log1p"])
def test_co_smoothing_with_scaled_inputs_equals_one_forward_pass_per_unit(session, scaling):
    model = tiny_model(session, input_scaling=scaling)

    expected = reference_rates(model, session, hider_of_one_unit(session), scheme="neuron")
    rates = predict_task(model, session, plan_task(session, "co-smoothing"), batch_size=4)
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)
    # the scaling is applied: the same weights reading raw counts predict otherwise
    assert session.split("test").spikes.max() > 1
    unscaled = tiny_model(session)
    hide = hider_of_one_unit(session)
    assert not np.allclose(reference_rates(unscaled, session, hide, scheme="neuron"), expected)


@pytest.mark.parametrize("fast", [True, False])
def test_intra_region_equals_one_forward_pass_per_unit(session, model, fast):
    regions = np.asarray(session.unit_regions)

    def hide_outside_plus_unit(n):
        if regions[n] == "root" or (regions == regions[n]).sum() < 2:
            return None
        hidden = np.broadcast_to(regions != regions[n], (session.num_bins, session.num_units))
        hidden = hidden.copy()
        hidden[:, n] = True
        return hidden

    expected = reference_rates(model, session, hide_outside_plus_unit, scheme="intra-region")
    rates = predict_task(
        model, session, plan_task(session, "intra-region"), batch_size=7, fast=fast
    )
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)
    assert np.isnan(rates[:, :, regions == "root"]).all()  # unlabelled: never a target


def test_forward_prediction_scores_only_the_last_bins():
    session = tiny_session(num_bins=23, trials=(6, 2, 4))
    model = tiny_model(session)
    plan = plan_task(session, "forward-prediction")
    num_hidden = round(0.1 * 23)  # 2
    assert plan.scored_bins.tolist() == [False] * 21 + [True] * num_hidden
    assert plan.causal and plan.scheme == "causal"
    rates = predict_task(model, session, plan)
    assert np.isnan(rates[:, :-num_hidden]).all() and np.isfinite(rates[:, -num_hidden:]).all()

    hidden = np.zeros((session.num_bins, session.num_units), dtype=bool)
    hidden[-num_hidden:] = True
    expected = reference_rates(model, session, lambda n: hidden, scheme="causal", causal=True)
    np.testing.assert_allclose(rates[:, -num_hidden:], expected[:, -num_hidden:], rtol=1e-5)
    # the hidden bins' own counts cannot matter
    test = session.split("test")
    changed = test.spikes.copy()
    changed[:, -num_hidden:] += 3
    other = session.replace(
        splits={**session.splits, "test": dataclasses.replace(test, spikes=changed)}
    )
    np.testing.assert_allclose(predict_task(model, other, plan), rates, rtol=1e-5)
    # the result scores those bins only
    result = score_task(plan, rates, test.spikes, unit_regions=session.unit_regions)
    observed = test.spikes[:, -num_hidden:]
    assert result.bps_pooled == pytest.approx(
        bits_per_spike_pooled(rates[:, -num_hidden:], observed)
    )


def test_inter_region_hides_whole_regions(session, model):
    plan = plan_task(session, "inter-region")
    regions = np.asarray(session.unit_regions)
    assert plan.num_variants == 3  # VISp, CA1, LGd; never "root"
    for hidden, targets in zip(plan.hidden_units, plan.targets, strict=True):
        region = regions[targets[0]]
        assert region != "root"
        np.testing.assert_array_equal(hidden, regions == region)
        np.testing.assert_array_equal(targets, np.flatnonzero(regions == region))
    rates = predict_task(model, session, plan, batch_size=3)
    assert np.isnan(rates[:, :, regions == "root"]).all()
    # a region's predictions ignore its own counts but not the other regions' counts
    test = session.split("test")
    for region, expect_same in (("CA1", True), ("VISp", False)):
        changed = test.spikes.copy()
        changed[:, :, regions == region] += 2
        other = session.replace(
            splits={**session.splits, "test": dataclasses.replace(test, spikes=changed)}
        )
        moved = predict_task(model, other, plan)[:, :, regions == "CA1"]
        assert np.allclose(moved, rates[:, :, regions == "CA1"], rtol=1e-5) == expect_same


def test_plans_of_a_single_region_session_are_skipped():
    single = tiny_session(regions=("VISp", "root"))
    for task in ("inter-region", "intra-region"):
        plan = plan_task(single, task)
        assert plan.num_variants == 0
        assert "1 labelled region" in plan.skipped
    assert plan_task(single, "co-smoothing").skipped is None
    with pytest.raises(SpikemaskError, match="unknown activity task 'smoothing'"):
        plan_task(single, "smoothing")


def test_intra_region_skips_single_unit_regions_and_allows_only_its_region():
    session = tiny_session(
        num_units=7, regions=("VISp", "CA1", "VISp", "CA1", "LGd", "VISp", "root")
    )
    plan = plan_task(session, "intra-region")
    assert sorted(int(t[0]) for t in plan.targets) == [0, 1, 2, 3, 5]  # not LGd (alone), root
    allowed = plan.allowed_inputs()
    np.testing.assert_array_equal(np.flatnonzero(allowed[:, 0]), [2, 5])
    np.testing.assert_array_equal(np.flatnonzero(allowed[:, 1]), [3])
    assert not allowed[:, [4, 6]].any()
    co = plan_task(session, "co-smoothing").allowed_inputs()
    np.testing.assert_array_equal(co, ~np.eye(7, dtype=bool))


def test_chunks_cover_every_row_once():
    for num_variants, num_trials, rows in [(5, 3, 4), (1, 7, 3), (4, 2, 100), (3, 3, 1)]:
        jobs = [
            _Job(np.zeros(2, dtype=bool), np.array([g]), np.array([g]), np.arange(num_trials))
            for g in range(num_variants)
        ]
        seen = []
        for segments in _chunks(jobs, rows):
            assert sum(s.trials.size for s in segments) <= rows
            offset = 0
            for s in segments:
                assert s.offset == offset
                offset += s.trials.size
                seen += [(int(s.job.targets[0]), int(k)) for k in s.trials]
        assert seen == [(g, k) for g in range(num_variants) for k in range(num_trials)]


def test_silent_rows_are_served_by_their_base_copy():
    """A variant's row runs itself only in trials where one of its own units fires."""
    session = tiny_session(num_units=6, regions=("VISp", "CA1", "root"), trials=(3, 2, 4))
    spikes = np.zeros((4, 7, 6), dtype=np.uint16)
    spikes[1, 3, 0] = 2  # unit 0 fires in trial 1 only
    spikes[:, 0, 1] = 1  # unit 1 fires in every trial
    jobs = plan_jobs(plan_task(session, "co-smoothing"), spikes)
    base, *own = jobs
    assert not base.hidden.any() and base.own.size == 0
    np.testing.assert_array_equal(base.targets, [0, 2, 3, 4, 5])  # not unit 1: never silent
    np.testing.assert_array_equal(base.trials, [0, 1, 2, 3])
    assert [(int(j.targets[0]), j.trials.tolist()) for j in own] == [(0, [1]), (1, [0, 1, 2, 3])]
    everything = plan_jobs(plan_task(session, "co-smoothing"), spikes, skip_silent=False)
    assert [j.trials.size for j in everything] == [4] * 6
    # forward prediction hides bins, not units: nothing to skip
    (forward,) = plan_jobs(plan_task(session, "forward-prediction"), spikes)
    assert forward.trials.tolist() == [0, 1, 2, 3] and forward.own.size == 0


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
@pytest.mark.parametrize("task", ["co-smoothing", "intra-region", "inter-region"])
def test_sparse_session_equals_every_pass_run(architecture, task):
    """With sparse counts most rows take the shortcut; the rates stay those of the plain
    computation (every variant on every trial through TrainedModel.forward)."""
    session = tiny_session(num_units=13, trials=(6, 2, 9), rate=0.04, seed=3)
    extra = {"architecture": "ndt2", "patch_size": 4} if architecture == "ndt2" else {}
    model = tiny_model(session, **extra)
    plan = plan_task(session, task)
    jobs = plan_jobs(plan, session.split("test").spikes)
    run_rows = sum(j.trials.size for j in jobs)
    if task != "inter-region":  # whole regions are rarely silent
        assert run_rows < 0.7 * plan.num_variants * 9  # the shortcut really skips rows
    shortcut = predict_task(model, session, plan, batch_size=5)
    plain = predict_task(model, session, plan, batch_size=7, fast=False)
    assert np.isfinite(plain[:, :, plan.scored_units]).all()
    np.testing.assert_allclose(shortcut, plain, rtol=1e-5, atol=1e-7)


def test_score_task_per_unit_and_per_region_values():
    session = tiny_session(num_units=6, regions=("VISp", "CA1", "root"), trials=(3, 2, 8))
    spikes = session.split("test").spikes
    plan = plan_task(session, "co-smoothing")
    rng = np.random.default_rng(1)
    rates = rng.uniform(0.05, 0.8, spikes.shape)
    spikes = spikes.copy()
    spikes[:, :, 4] = 0  # a silent unit: NaN bps, left out of the mean
    result = score_task(plan, rates, spikes, unit_regions=session.unit_regions)
    expected = bits_per_spike_per_unit(rates, spikes)
    np.testing.assert_allclose(result.bps_per_unit, expected)
    assert math.isnan(result.bps_per_unit[4])
    assert result.bps == pytest.approx(np.nanmean(expected))
    assert result.bps_pooled == pytest.approx(bits_per_spike_pooled(rates, spikes))
    visp = [0, 3]
    assert result.per_region["VISp"]["bps_pooled"] == pytest.approx(
        bits_per_spike_pooled(rates[:, :, visp], spikes[:, :, visp])
    )
    assert result.per_region["CA1"]["num_units"] == 2
    assert result.per_region["CA1"]["bps"] == pytest.approx(expected[1])  # unit 4 is silent
    payload = result.to_json(digits=3)
    assert set(payload) == {
        "bps",
        "bps_pooled",
        "poisson_d2",
        "poisson_d2_pooled",
        "num_units",
        "num_silent_units",
        "per_region",
    }
    d2 = poisson_d2_per_unit(rates, spikes)
    np.testing.assert_allclose(result.d2_per_unit, d2)
    assert result.poisson_d2 == pytest.approx(np.nanmean(d2))
    assert result.poisson_d2_pooled == pytest.approx(poisson_d2_pooled(rates, spikes))
    assert result.per_region["VISp"]["poisson_d2"] == pytest.approx(np.nanmean(d2[visp]))
    assert payload["bps"] == round(result.bps, 3) and payload["num_units"] == 6
    assert payload["num_silent_units"] == 1  # reported, not scored


def test_to_jsonable_rounds_and_replaces_nan():
    value = {"a": np.float32(0.123456), "b": [math.nan, np.int64(3), True], "c": math.inf}
    assert to_jsonable(value, 3) == {"a": 0.123, "b": [None, 3, True], "c": None}


@pytest.mark.parametrize("task", ["co-smoothing", "intra-region", "inter-region"])
@pytest.mark.parametrize("fast", [True, False])
def test_hidden_flags_model_equals_one_forward_pass_per_variant(task, fast):
    """A model that reads hidden flags: the fast path adds each hidden unit's flag column
    and no longer serves silent units from their base copy; the rates are those of one
    plain forward pass per masked copy, and the flags change them."""
    session = tiny_session(num_units=13, trials=(6, 2, 9), rate=0.04, seed=3)
    model = tiny_model(session, hidden_flags=True)
    plan = plan_task(session, task)
    spikes = session.split("test").spikes
    expected = np.full(spikes.shape, np.nan)
    for hidden, targets in zip(plan.hidden_units, plan.targets, strict=True):
        mask = torch.as_tensor(np.broadcast_to(hidden, spikes.shape).copy())
        (out,) = model.forward(spikes, session, hidden=mask, prompt=model.prompt_for(plan.scheme))
        expected[:, :, targets] = out.log_rates[:, :, targets].exp().numpy()
    rates = predict_task(model, session, plan, batch_size=5, fast=fast)
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)

    adapter = model.model.adapter(session.session_id)
    with torch.no_grad():
        adapter.hidden_in.weight.zero_()
    unflagged = predict_task(model, session, plan, batch_size=5, fast=fast)
    scored = np.isfinite(rates)
    assert not np.allclose(unflagged[scored], rates[scored], rtol=1e-3)


@pytest.mark.parametrize("task", ["co-smoothing", "inter-region"])
@pytest.mark.parametrize("fast", [True, False])
def test_tied_stitchers_model_equals_one_forward_pass_per_variant(task, fast):
    """The evaluation's fast path builds the read-in from the read-in's weight: with tied
    stitchers that is the read-out's, transposed, and the rates are still those of one
    plain forward pass per masked copy."""
    session = tiny_session(num_units=13, trials=(6, 2, 9), rate=0.04, seed=4)
    model = tiny_model(session, tied_stitchers=True, width=32, stitch_width=None)
    plan = plan_task(session, task)
    spikes = session.split("test").spikes
    expected = np.full(spikes.shape, np.nan)
    for hidden, targets in zip(plan.hidden_units, plan.targets, strict=True):
        masked = np.where(np.broadcast_to(hidden, spikes.shape), 0, spikes)
        (out,) = model.forward(masked, session, prompt=model.prompt_for(plan.scheme))
        expected[:, :, targets] = out.log_rates[:, :, targets].exp().numpy()
    rates = predict_task(model, session, plan, batch_size=5, fast=fast)
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)


def test_tied_stitchers_survive_a_checkpoint(tmp_path):
    from spikemask.training.checkpoint import load_checkpoint, save_checkpoint

    session = tiny_session(num_units=13, trials=(6, 2, 9), rate=0.04, seed=4)
    model = tiny_model(session, tied_stitchers=True, width=32, stitch_width=None)
    save_checkpoint(tmp_path / "best", model.checkpoint)
    loaded = load_checkpoint(tmp_path / "best")
    assert loaded.config.model.tied_stitchers
    adapter = loaded.model.adapter(session.session_id)
    assert torch.equal(adapter.read_in.weight, adapter.read_out.weight.t())
    spikes = session.split("test").spikes
    (before,) = model.forward(spikes, session, prompt=0)
    (after,) = TrainedModel(loaded).forward(spikes, session, prompt=0)
    torch.testing.assert_close(after.log_rates, before.log_rates)
