"""Tests for spikemask.masking: scheme structure, exact ratios, seeding, errors, mixture."""

from __future__ import annotations

import pytest
import torch

from spikemask.errors import SpikemaskError
from spikemask.masking import (
    PROMPT_INDEX,
    SCHEMES,
    MaskingConfig,
    MaskingMixture,
    MaskSpec,
    apply_mask,
    causal_mask,
    forward_prediction_mask,
    inter_region_mask,
    intra_region_mask,
    neuron_mask,
    random_mask,
    random_token_mask,
    temporal_mask,
)

B, T, N = 3, 7, 11
SHAPE = (B, T, N)
# regions 5 (3 units), 2 (4 units), 9 (3 units), one unlabelled unit (index 9)
REGION_IDS = torch.tensor([5, 5, 5, 2, 2, 2, 2, 9, 9, -1, 9])
REGION_SIZES = {5: 3, 2: 4, 9: 3}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(scheme: str, seed: int = 0, shape=SHAPE, **kwargs) -> MaskSpec:
    """Build any scheme with default ratios through the mixture."""
    config = MaskingConfig(schemes=SCHEMES, patch_size=4)
    region_ids = kwargs.pop("region_ids", REGION_IDS)
    return MaskingMixture(config).build(
        scheme, shape, generator=gen(seed), region_ids=region_ids, **kwargs
    )


def whole_bins(hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, N) -> (B, T) bins hidden for every unit; asserts bins are all-or-nothing."""
    assert torch.equal(hidden.all(dim=2), hidden.any(dim=2))
    return hidden.all(dim=2)


def whole_units(hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, N) -> (B, N) units hidden at every bin; asserts units are all-or-nothing."""
    assert torch.equal(hidden.all(dim=1), hidden.any(dim=1))
    return hidden.all(dim=1)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_basic_contract(scheme: str) -> None:
    spec = build(scheme)
    assert spec.scheme == scheme
    assert spec.prompt == PROMPT_INDEX[scheme] == SCHEMES.index(scheme)
    assert spec.causal == (scheme == "causal")
    assert spec.hidden.shape == spec.scored.shape == SHAPE
    assert spec.hidden.dtype == spec.scored.dtype == torch.bool
    assert not (spec.scored & ~spec.hidden).any()  # only hidden entries are scored
    flat_hidden = spec.hidden.reshape(B, -1)
    assert flat_hidden.any(dim=1).all() and not flat_hidden.all(dim=1).any()
    assert spec.scored.reshape(B, -1).any(dim=1).all()


@pytest.mark.parametrize(
    ("function", "ratio", "num_hidden"), [(temporal_mask, 0.3, 2), (causal_mask, 0.6, 4)]
)
def test_bin_schemes_hide_exact_whole_bins(function, ratio: float, num_hidden: int) -> None:
    spec = function(SHAPE, generator=gen())
    assert torch.equal(spec.hidden, spec.scored)
    bins = whole_bins(spec.hidden)
    assert bins.sum(dim=1).tolist() == [num_hidden] * B  # round(ratio * 7)
    assert spec.causal is (function is causal_mask)
    assert not all(torch.equal(bins[0], row) for row in bins[1:])  # drawn per example


@pytest.mark.parametrize(
    ("ratio", "num_bins", "expected"),
    [(0.3, 10, 3), (0.5, 8, 4), (0.01, 7, 1), (0.99, 7, 6), (0.5, 2, 1), (0.6, 20, 12)],
)
def test_temporal_count_is_exact_and_clamped(ratio: float, num_bins: int, expected: int) -> None:
    spec = temporal_mask((B, num_bins, N), ratio=ratio, generator=gen())
    assert whole_bins(spec.hidden).sum(dim=1).tolist() == [expected] * B


def test_neuron_hides_exact_whole_units() -> None:
    spec = neuron_mask(SHAPE, ratio=0.3, generator=gen())
    assert torch.equal(spec.hidden, spec.scored)
    units = whole_units(spec.hidden)
    assert units.sum(dim=1).tolist() == [3] * B  # round(0.3 * 11)
    assert neuron_mask(SHAPE, ratio=0.99, generator=gen()).hidden[:, 0].sum(1).tolist() == [10] * B


def test_random_hides_exact_entries() -> None:
    spec = random_mask(SHAPE, ratio=0.3, generator=gen())
    assert torch.equal(spec.hidden, spec.scored)
    assert spec.hidden.reshape(B, -1).sum(dim=1).tolist() == [23] * B  # round(0.3 * 77)
    partly_hidden_bins = spec.hidden.any(dim=2) & ~spec.hidden.all(dim=2)
    assert partly_hidden_bins.any()  # entries, not whole bins


def test_random_token_hides_whole_patches() -> None:
    spec = random_token_mask(SHAPE, patch_size=4, ratio=0.3, generator=gen())
    assert torch.equal(spec.hidden, spec.scored)
    groups = [spec.hidden[..., 0:4], spec.hidden[..., 4:8], spec.hidden[..., 8:11]]  # last partial
    patch_all = torch.stack([group.all(dim=-1) for group in groups], dim=-1)  # (B, T, 3)
    patch_any = torch.stack([group.any(dim=-1) for group in groups], dim=-1)
    assert torch.equal(patch_all, patch_any)
    assert patch_all.reshape(B, -1).sum(dim=1).tolist() == [6] * B  # round(0.3 * 21)


def test_random_token_skips_all_padding_patches() -> None:
    unit_valid = torch.arange(N) < 8  # last group (units 8-10) is padding
    spec = random_token_mask(SHAPE, patch_size=4, ratio=0.5, generator=gen(), unit_valid=unit_valid)
    assert not spec.hidden[..., 8:].any()
    assert spec.hidden[..., :8].reshape(B, -1).sum(dim=1).tolist() == [7 * 4] * B  # 7 of 14


def test_inter_region_hides_exactly_one_region() -> None:
    chosen = set()
    for seed in range(20):
        spec = inter_region_mask(SHAPE, REGION_IDS, generator=gen(seed))
        assert torch.equal(spec.hidden, spec.scored)
        units = whole_units(spec.hidden)
        for row in units:
            regions = REGION_IDS[row].unique().tolist()
            assert len(regions) == 1 and regions[0] >= 0
            assert row.sum() == REGION_SIZES[regions[0]]  # all of the region
            chosen.add(regions[0])
    assert chosen == set(REGION_SIZES)  # every labelled region gets drawn


def test_inter_region_one_region_plus_unlabelled_is_allowed() -> None:
    region_ids = torch.tensor([0] * 10 + [-1])
    spec = inter_region_mask(SHAPE, region_ids, generator=gen())
    assert whole_units(spec.hidden).sum(dim=1).tolist() == [10] * B
    assert not spec.hidden[..., 10].any()


@pytest.mark.parametrize(
    ("ratio", "expected"), [(0.3, {5: 1, 2: 1, 9: 1}), (0.5, {5: 2, 2: 2, 9: 2})]
)
def test_intra_region_structure(ratio: float, expected: dict[int, int]) -> None:
    for seed in range(10):
        spec = intra_region_mask(SHAPE, REGION_IDS, ratio=ratio, generator=gen(seed))
        hidden_units, scored_units = whole_units(spec.hidden), whole_units(spec.scored)
        for hidden_row, scored_row in zip(hidden_units, scored_units, strict=True):
            region = REGION_IDS[scored_row].unique().tolist()
            assert len(region) == 1  # scored units lie in one region
            in_region = torch.eq(REGION_IDS, region[0])
            assert hidden_row[~in_region].all()  # everything outside is hidden (unlabelled too)
            assert torch.equal(hidden_row[in_region], scored_row[in_region])
            assert scored_row.sum() == expected[region[0]]  # round(ratio * n), >= 1, <= n - 1


def test_intra_region_only_chooses_regions_with_two_units() -> None:
    region_ids = torch.tensor([0, 1, 1, 2, 3, 4, 5, 6, 7, 8, -1])  # only region 1 has 2 units
    for seed in range(5):
        spec = intra_region_mask(SHAPE, region_ids, generator=gen(seed))
        assert whole_units(spec.scored)[:, 1:3].sum(dim=1).tolist() == [1] * B


def test_forward_prediction_mask() -> None:
    spec = forward_prediction_mask((B, 20, N))
    assert spec.scheme == "causal" and spec.causal and spec.prompt == PROMPT_INDEX["causal"]
    assert torch.equal(spec.hidden, spec.scored)
    expected = torch.zeros(B, 20, N, dtype=torch.bool)
    expected[:, 18:] = True  # round(0.1 * 20) = 2 last bins
    assert torch.equal(spec.hidden, expected)
    assert forward_prediction_mask(SHAPE).hidden[0, :, 0].tolist() == [False] * 6 + [True]


def test_apply_mask_returns_new_tensor_and_keeps_input() -> None:
    spikes = torch.randint(1, 5, SHAPE, generator=gen(1)).float()
    original = spikes.clone()
    spec = build("random")
    masked = apply_mask(spikes, spec)
    assert torch.equal(spikes, original)
    assert masked.data_ptr() != spikes.data_ptr()
    assert (masked[spec.hidden] == 0).all()
    assert torch.equal(masked[~spec.hidden], spikes[~spec.hidden])
    with pytest.raises(SpikemaskError, match="same"):
        apply_mask(spikes[:, :5], spec)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_mask_different_seed_different(scheme: str) -> None:
    first, again, other = build(scheme, 0), build(scheme, 0), build(scheme, 1)
    assert torch.equal(first.hidden, again.hidden) and torch.equal(first.scored, again.scored)
    assert not torch.equal(first.hidden, other.hidden)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("per_row", [False, True])
def test_unit_valid_is_respected(scheme: str, per_row: bool) -> None:
    unit_valid = torch.ones(B, N, dtype=torch.bool) if per_row else torch.ones(N, dtype=torch.bool)
    unit_valid[..., 1] = False
    unit_valid[..., 10] = False
    if per_row:
        unit_valid[1, 4] = False
    spec = build(scheme, unit_valid=unit_valid)
    invalid = ~unit_valid.expand(B, N)[:, None, :].expand(SHAPE)
    assert not spec.hidden[invalid].any() and not spec.scored[invalid].any()
    assert spec.hidden.any()


def test_neuron_ratio_counts_valid_units_only() -> None:
    unit_valid = torch.ones(B, N, dtype=torch.bool)
    unit_valid[1, :5] = False  # row 1 has 6 valid units
    spec = neuron_mask(SHAPE, ratio=0.5, generator=gen(), unit_valid=unit_valid)
    assert whole_units(spec.hidden).sum(dim=1).tolist() == [6, 3, 6]  # round(5.5)=6, round(3)=3


def test_masks_move_to_device() -> None:
    spec = build("neuron", device="cpu")
    assert spec.hidden.device.type == "cpu"
    if torch.cuda.is_available():
        on_gpu = build("neuron", device="cuda")
        assert on_gpu.hidden.is_cuda and torch.equal(on_gpu.hidden.cpu(), spec.hidden)


def test_mixture_draws_follow_weights() -> None:
    config = MaskingConfig(schemes=("neuron", "causal", "temporal"), weights=(1.0, 2.0, 1.0))
    mixture = MaskingMixture(config)
    generator = gen()
    draws = [mixture.draw_scheme(generator=generator) for _ in range(2000)]
    assert set(draws) == {"neuron", "causal", "temporal"}
    for scheme, probability in zip(config.schemes, (0.25, 0.5, 0.25), strict=True):
        assert abs(draws.count(scheme) / 2000 - probability) < 0.05  # ~4.5 standard errors
    for seed in range(5):  # sample() builds the scheme that the same draw picks
        spec = mixture.sample((2, 5, 4), generator=gen(seed))
        assert spec.scheme == mixture.draw_scheme(generator=gen(seed))


def test_mixture_default_is_mtm_plus_temporal_and_sample_is_seeded() -> None:
    mixture = MaskingMixture(MaskingConfig())
    draws = {
        mixture.sample(SHAPE, generator=g, region_ids=REGION_IDS).scheme
        for g in map(gen, range(40))
    }
    assert draws == {"neuron", "causal", "inter-region", "intra-region", "temporal"}
    assert MaskingConfig.preset("mtm").schemes == (
        "neuron",
        "causal",
        "inter-region",
        "intra-region",
    )
    first = mixture.sample(SHAPE, generator=gen(3), region_ids=REGION_IDS)
    again = mixture.sample(SHAPE, generator=gen(3), region_ids=REGION_IDS)
    assert first.scheme == again.scheme and torch.equal(first.hidden, again.hidden)


def test_default_weights_draw_neuron_masking_twice_as_often() -> None:
    from spikemask.config import apply_overrides, load_config

    default = MaskingConfig()
    assert default.weights is None  # resolved when drawn, so a new scheme list needs no weights
    assert default.resolved_weights == (2.0, 1.0, 1.0, 1.0, 1.0)
    assert default.schemes[0] == "neuron"
    generator = gen()
    mixture = MaskingMixture(default)
    draws = [mixture.draw_scheme(generator=generator) for _ in range(3000)]
    assert abs(draws.count("neuron") / 3000 - 2 / 6) < 0.04  # ~4.6 standard errors
    assert abs(draws.count("causal") / 3000 - 1 / 6) < 0.03
    # the paper's set keeps its even draw; given weights win
    assert MaskingConfig.preset("mtm").resolved_weights == (1.0, 1.0, 1.0, 1.0)
    assert MaskingConfig(weights=(1, 1, 1, 1, 3)).resolved_weights == (1.0, 1.0, 1.0, 1.0, 3.0)
    # a YAML / --set override of the schemes alone resolves against the new list
    override = {"masking": {"schemes": ["causal", "neuron"]}}
    config = apply_overrides(load_config(), override, where="test")
    assert config.masking.resolved_weights == (1.0, 2.0)
    assert load_config().to_dict()["masking"]["weights"] is None


def test_config_from_yaml_lists_and_ratio_merge() -> None:
    config = MaskingConfig(
        schemes=["neuron", "random-token"], weights=[1, 3], ratios={"neuron": 0.5}
    )
    assert config.schemes == ("neuron", "random-token") and config.weights == (1.0, 3.0)
    assert config.ratios["neuron"] == 0.5 and config.ratios["causal"] == 0.6
    assert not config.needs_regions
    spec = MaskingMixture(config).build("neuron", SHAPE, generator=gen())
    assert whole_units(spec.hidden).sum(dim=1).tolist() == [6] * B  # round(0.5 * 11)


@pytest.mark.parametrize(
    ("name", "schemes"),
    [
        ("mtm", ("neuron", "causal", "inter-region", "intra-region")),
        ("mtm-temporal", ("neuron", "causal", "inter-region", "intra-region", "temporal")),
        ("temporal", ("temporal",)),
        ("random-token", ("random-token",)),
    ],
)
def test_presets(name: str, schemes: tuple[str, ...]) -> None:
    config = MaskingConfig.preset(name)
    assert config.schemes == schemes
    assert config.needs_regions == ("inter-region" in schemes)


BAD_CALLS = [
    (
        "needs region labels",
        lambda: inter_region_mask(SHAPE, torch.full((N,), -1), generator=gen()),
    ),
    (
        "needs region labels",
        lambda: intra_region_mask(SHAPE, torch.full((N,), -1), generator=gen()),
    ),
    ("needs region labels", lambda: build("inter-region", region_ids=None)),
    (
        "at least 2 regions",
        lambda: inter_region_mask(SHAPE, torch.zeros(N, dtype=torch.long), generator=gen()),
    ),
    ("region with at least 2", lambda: intra_region_mask(SHAPE, torch.arange(N), generator=gen())),
    ("length 10", lambda: inter_region_mask(SHAPE, REGION_IDS[:10], generator=gen())),
    (
        "length 12",
        lambda: intra_region_mask(SHAPE, torch.zeros(12, dtype=torch.long), generator=gen()),
    ),
    ("integer", lambda: inter_region_mask(SHAPE, REGION_IDS.float(), generator=gen())),
    ("ratio must be", lambda: temporal_mask(SHAPE, ratio=0.0, generator=gen())),
    ("ratio must be", lambda: neuron_mask(SHAPE, ratio=1.0, generator=gen())),
    ("ratio must be", lambda: random_mask(SHAPE, ratio=float("nan"), generator=gen())),
    ("ratio must be", lambda: intra_region_mask(SHAPE, REGION_IDS, ratio=-0.2, generator=gen())),
    ("fraction must be", lambda: forward_prediction_mask(SHAPE, fraction=1.5)),
    ("shape must be", lambda: causal_mask((B, T), generator=gen())),
    ("shape must be", lambda: neuron_mask((B, 0, N), generator=gen())),
    ("at least 2 time bins", lambda: temporal_mask((B, 1, N), generator=gen())),
    ("at least 2 valid units", lambda: neuron_mask((B, T, 1), generator=gen())),
    ("unit_valid", lambda: neuron_mask(SHAPE, generator=gen(), unit_valid=torch.ones(N))),
    (
        "no valid unit",
        lambda: neuron_mask(SHAPE, generator=gen(), unit_valid=torch.zeros(N, dtype=torch.bool)),
    ),
    ("patch_size", lambda: random_token_mask(SHAPE, patch_size=0, generator=gen())),
    ("pass a torch.Generator", lambda: temporal_mask(SHAPE, generator=None)),
    ("unknown masking scheme", lambda: MaskingConfig(schemes=("neuron", "spatial"))),
    ("unknown masking scheme", lambda: build("spatial")),
    ("unknown masking preset", lambda: MaskingConfig.preset("mtm2")),
    ("non-empty", lambda: MaskingConfig(schemes=())),
    ("weights must be 2", lambda: MaskingConfig(schemes=("neuron", "causal"), weights=(1.0,))),
    ("weights must be 2", lambda: MaskingConfig(schemes=("neuron", "causal"), weights=(1.0, 0.0))),
    ("ratio for 'causal'", lambda: MaskingConfig(ratios={"causal": 1.2})),
    ("take no ratio", lambda: MaskingConfig(ratios={"inter-region": 0.3})),
    ("patch_size", lambda: MaskingConfig(patch_size=0)),
]


@pytest.mark.parametrize(("message", "call"), BAD_CALLS)
def test_errors_are_clear(message: str, call) -> None:
    with pytest.raises(SpikemaskError, match=message):
        call()
