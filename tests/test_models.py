"""Tests for spikemask.models (NDT1 / NDT2, shared layers, config)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikemask.errors import SpikemaskError
from spikemask.models import NDT1, NDT2, PRESETS, ModelConfig, build_model, model_preset
from spikemask.models.layers import (
    INITIAL_RATE,
    RotaryEmbedding,
    apply_rotary,
    build_attention_mask,
)

BATCH, BINS, UNITS, WIDTH = 3, 7, 11, 32
VARIANTS = [
    ("ndt1", "learned"),
    ("ndt1", "rotary"),
    ("ndt2", "learned"),
    ("ndt2", "rotary"),
]


def tiny_config(architecture: str = "ndt1", position_embedding: str = "learned", **overrides):
    fields = {
        "architecture": architecture,
        "width": WIDTH,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_width": 48,
        "dropout": 0.3,
        "embed_dropout": 0.2,
        "stitch_width": 24,
        "position_embedding": position_embedding,
        "max_bins": 16,
        "patch_size": 4,  # 11 units -> 3 patches, one unit of padding
        "max_space_patches": 8,
        "max_regions": 6,
    }
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_model(architecture="ndt1", position_embedding="learned", sessions=None, **overrides):
    model = build_model(
        tiny_config(architecture, position_embedding, **overrides),
        sessions=sessions if sessions is not None else {"sess-a": UNITS, "sess-b": 5},
        num_prompts=3,
        generator=torch.Generator().manual_seed(0),
    )
    randomize_read_out(model)
    return model


def randomize_read_out(model) -> None:
    """Untied read-outs start at zero weights (predictions = per-unit rates); the structural tests
    need outputs that depend on the inputs, as after training."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "read_out.weight" in name:
                parameter.normal_(0.0, 0.3, generator=generator)


def poisson_spikes(seed: int = 1, shape=(BATCH, BINS, UNITS), rate: float = 0.7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full(shape, rate), generator=generator)


REGION_IDS = torch.tensor([0, 1, -1, 2, 2, 2, 3, 3, -1, -1, 5])


@pytest.mark.parametrize(("architecture", "position_embedding"), VARIANTS)
def test_forward_shapes_and_initial_rates(architecture, position_embedding):
    model = tiny_model(architecture, position_embedding).eval()
    spikes = poisson_spikes()
    before = spikes.clone()
    output = model(spikes, session_id="sess-a", prompt=1, region_ids=REGION_IDS)
    assert output.log_rates.shape == (BATCH, BINS, UNITS)
    assert output.latents.shape == (BATCH, BINS, WIDTH)
    assert torch.isfinite(output.log_rates).all()
    # Read-out bias starts at log(0.05): initial rates are small.
    assert abs(output.log_rates.mean().item() - math.log(INITIAL_RATE)) < 1.0
    assert torch.equal(spikes, before)  # input not mutated
    small = model(poisson_spikes(shape=(2, 4, 5)), session_id="sess-b", prompt=0)
    assert small.log_rates.shape == (2, 4, 5)


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_unknown_session_names_id_and_known_ones(architecture):
    model = tiny_model(architecture)
    with pytest.raises(SpikemaskError, match=r"unknown session id 'nope'.*'sess-a', 'sess-b'"):
        model(poisson_spikes(), session_id="nope", prompt=0)
    many = tiny_model(architecture, sessions={f"s{i}": 3 for i in range(25)})
    with pytest.raises(SpikemaskError, match=r"25 session\(s\).*'s9', \.\.\. \(15 more\)"):
        many.num_units("nope")


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_unit_count_mismatch_is_an_error(architecture):
    model = tiny_model(architecture)
    with pytest.raises(SpikemaskError, match="session 'sess-b' has 5 units but spikes have 11"):
        model(poisson_spikes(), session_id="sess-b", prompt=0)


@pytest.mark.parametrize(
    ("spikes", "kwargs", "message"),
    [
        (torch.zeros(BATCH, UNITS), {"prompt": 0}, "must be a \\(batch, time, units\\)"),
        (torch.zeros(BATCH, BINS, UNITS, dtype=torch.long), {"prompt": 0}, "float tensor"),
        (torch.zeros(BATCH, 17, UNITS), {"prompt": 0}, "max_bins = 16"),
        (torch.zeros(BATCH, BINS, UNITS), {}, "prompt must be an int in \\[0, 3\\)"),
        (torch.zeros(BATCH, BINS, UNITS), {"prompt": 3}, "got 3"),
        (torch.zeros(BATCH, BINS, UNITS), {"prompt": True}, "got True"),
        (torch.zeros(BATCH, BINS, UNITS), {"prompt": 1.0}, "got 1.0"),
    ],
)
@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_bad_forward_inputs(architecture, spikes, kwargs, message):
    model = tiny_model(architecture)
    with pytest.raises(SpikemaskError, match=message):
        model(spikes, session_id="sess-a", **kwargs)


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_add_session_creates_only_new_parameters(architecture):
    model = tiny_model(architecture)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.add_session("sess.c/with dots", UNITS, generator=torch.Generator().manual_seed(5))
    after = model.state_dict()
    new_keys = set(after) - set(before)
    assert new_keys and all(key.startswith("session_adapters.2.") for key in new_keys)
    assert all(torch.equal(after[key], value) for key, value in before.items())
    assert model.session_ids == ["sess-a", "sess-b", "sess.c/with dots"]
    assert model.num_units("sess.c/with dots") == UNITS
    assert model.sessions == {"sess-a": UNITS, "sess-b": 5, "sess.c/with dots": UNITS}
    new_ids = {id(p) for p in model.session_parameters("sess.c/with dots")}
    assert new_ids == {id(p) for p in model.session_adapters[2].parameters()}
    old_ids = {id(p) for name, p in model.named_parameters() if "adapters.2." not in name}
    assert not new_ids & old_ids
    output = model.eval()(poisson_spikes(), session_id="sess.c/with dots", prompt=2)
    assert output.log_rates.shape == (BATCH, BINS, UNITS)
    with pytest.raises(SpikemaskError, match="already in the model"):
        model.add_session("sess-a", UNITS)
    with pytest.raises(SpikemaskError, match="positive int"):
        model.add_session("sess-d", 0)


def test_ndt1_session_parameters_are_the_stitchers_and_token():
    model = tiny_model("ndt1")
    shapes = sorted(tuple(p.shape) for p in model.session_parameters("sess-b"))
    assert shapes == sorted([(WIDTH,), (24, 5), (24,), (5, WIDTH), (5,)])


@pytest.mark.parametrize("causal", [False, True])
def test_ndt1_forward_is_read_in_encode_stitched_read_out(causal):
    model = tiny_model("ndt1").eval()
    spikes = poisson_spikes()
    adapter = model.adapter("sess-a")
    with torch.no_grad():
        expected = model(spikes, session_id="sess-a", prompt=2, causal=causal)
        latents = model.encode_stitched(
            adapter.read_in(spikes), session_id="sess-a", prompt=2, causal=causal
        )
    torch.testing.assert_close(latents, expected.latents)
    torch.testing.assert_close(adapter.read_out(latents), expected.log_rates)
    with pytest.raises(SpikemaskError, match="unknown session id 'nope'"):
        model.adapter("nope")


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_sessions_with_equal_unit_counts_get_distinct_layers(architecture):
    model = tiny_model(architecture, sessions={"x": UNITS, "y": UNITS}).eval()
    params_x, params_y = model.session_parameters("x"), model.session_parameters("y")
    assert len(params_x) == len(params_y) > 0
    for param_x, param_y in zip(params_x, params_y, strict=True):
        assert param_x is not param_y
    assert not torch.equal(params_x[0], params_y[0])  # independently initialised tokens
    spikes = poisson_spikes()
    out_x = model(spikes, session_id="x", prompt=0).log_rates
    out_y = model(spikes, session_id="y", prompt=0).log_rates
    assert not torch.allclose(out_x, out_y)


@pytest.mark.parametrize(("architecture", "position_embedding"), VARIANTS)
def test_causal_mode_does_not_leak_future_bins(architecture, position_embedding):
    model = tiny_model(architecture, position_embedding).eval()
    spikes = poisson_spikes()
    with torch.no_grad():
        for causal in (True, False):
            reference = model(spikes, session_id="sess-a", prompt=2, causal=causal)
            for last_seen in range(BINS - 1):
                perturbed = spikes.clone()
                perturbed[:, last_seen + 1 :] += 3.0
                output = model(perturbed, session_id="sess-a", prompt=2, causal=causal)
                past = slice(0, last_seen + 1)
                same_rates = torch.allclose(
                    output.log_rates[:, past], reference.log_rates[:, past], atol=1e-6
                )
                same_latents = torch.allclose(
                    output.latents[:, past], reference.latents[:, past], atol=1e-6
                )
                assert same_rates == causal and same_latents == causal
                assert not torch.allclose(output.log_rates, reference.log_rates)


def test_build_attention_mask_values():
    # 2 special tokens, 3 one-bin tokens.
    allowed = build_attention_mask(2, 3, causal=True)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)
    # Patches: two tokens per bin, bins [0, 0, 1, 1]; tokens of one bin see each other.
    patches = build_attention_mask(1, torch.tensor([0, 0, 1, 1]), causal=True)
    expected_patches = [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert patches[1:, 1:].int().tolist() == expected_patches
    assert patches[0].tolist() == [True, False, False, False, False]
    assert build_attention_mask(2, 3, causal=False).all()


def test_rotary_scores_depend_only_on_position_difference():
    rotary = RotaryEmbedding(8)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 1, 1, 8, generator=generator).expand(1, 1, 4, 8)
    key = torch.randn(1, 1, 1, 8, generator=generator).expand(1, 1, 4, 8)
    cos, sin = rotary(torch.tensor([0, 3, 5, 8]))
    rotated_query, rotated_key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
    assert torch.allclose(rotated_query.norm(dim=-1), query.norm(dim=-1), atol=1e-6)
    scores = (rotated_query @ rotated_key.transpose(-1, -2))[0, 0]  # (4, 4)
    # positions 0->3 and 5->8 are both 3 apart; 0->0 is the unrotated dot product
    assert torch.allclose(scores[0, 1], scores[2, 3], atol=1e-5)
    assert torch.allclose(scores[0, 0], (query[0, 0, 0] * key[0, 0, 0]).sum(), atol=1e-6)
    assert not torch.allclose(scores[0, 1], scores[0, 2], atol=1e-3)


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_eval_is_deterministic_and_train_uses_dropout(architecture):
    model = tiny_model(architecture)
    twin = tiny_model(architecture)  # same generator seed -> same weights
    for (name, value), (_, twin_value) in zip(
        model.state_dict().items(), twin.state_dict().items(), strict=True
    ):
        assert torch.equal(value, twin_value), name
    spikes = poisson_spikes()
    model.eval()
    first = model(spikes, session_id="sess-a", prompt=0).log_rates
    assert torch.equal(first, model(spikes, session_id="sess-a", prompt=0).log_rates)
    model.train()
    torch.manual_seed(0)
    noisy_1 = model(spikes, session_id="sess-a", prompt=0).log_rates
    noisy_2 = model(spikes, session_id="sess-a", prompt=0).log_rates
    assert not torch.allclose(noisy_1, noisy_2)
    assert not torch.allclose(noisy_1, first)


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_prompt_and_session_tokens_matter_and_can_be_disabled(architecture):
    model = tiny_model(architecture).eval()
    spikes = poisson_spikes()
    prompt_0 = model(spikes, session_id="sess-a", prompt=0).log_rates
    numpy_prompt = model(spikes, session_id="sess-a", prompt=np.int64(0)).log_rates
    assert torch.equal(prompt_0, numpy_prompt)
    assert not torch.allclose(prompt_0, model(spikes, session_id="sess-a", prompt=1).log_rates)
    bare = tiny_model(architecture, session_token=False, prompt_token=False).eval()
    assert bare.num_special_tokens == 0
    # without prompt tokens the prompt argument is ignored
    out_none = bare(spikes, session_id="sess-a").log_rates
    assert torch.equal(out_none, bare(spikes, session_id="sess-a", prompt=2).log_rates)


def test_ndt2_region_embedding():
    model = tiny_model("ndt2").eval()
    spikes = poisson_spikes()
    with_regions = model(spikes, session_id="sess-a", prompt=0, region_ids=REGION_IDS).log_rates
    without = model(spikes, session_id="sess-a", prompt=0).log_rates
    unlabelled = torch.full((UNITS,), -1)
    all_unlabelled = model(spikes, session_id="sess-a", prompt=0, region_ids=unlabelled)
    assert torch.allclose(all_unlabelled.log_rates, without)
    assert not torch.allclose(with_regions, without)
    # regions are used per patch: changing a unit of patch 2 (units 8-10) only relabels it
    relabelled = REGION_IDS.clone()
    relabelled[10] = 4
    changed = model(spikes, session_id="sess-a", prompt=0, region_ids=relabelled).log_rates
    assert not torch.allclose(changed, with_regions)
    # NDT1 accepts and ignores region ids
    ndt1 = tiny_model("ndt1").eval()
    plain = ndt1(spikes, session_id="sess-a", prompt=0).log_rates
    assert torch.equal(
        plain, ndt1(spikes, session_id="sess-a", prompt=0, region_ids=REGION_IDS).log_rates
    )


@pytest.mark.parametrize(
    ("region_ids", "message"),
    [
        (torch.zeros(UNITS + 1, dtype=torch.long), "shape \\(11,\\)"),
        (torch.zeros(UNITS), "must be integers"),
        (torch.full((UNITS,), 6), "< config.max_regions = 6"),
    ],
)
def test_ndt2_bad_region_ids(region_ids, message):
    model = tiny_model("ndt2")
    with pytest.raises(SpikemaskError, match=message):
        model(poisson_spikes(), session_id="sess-a", prompt=0, region_ids=region_ids)


def test_ndt2_too_many_space_patches():
    with pytest.raises(SpikemaskError, match="33 units make 9 patches"):
        tiny_model("ndt2", sessions={"big": 33})


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_adam_steps_reduce_poisson_nll(architecture):
    torch.manual_seed(0)  # dropout draws
    model = tiny_model(architecture, dropout=0.0, embed_dropout=0.0)
    generator = torch.Generator().manual_seed(3)
    rates = torch.rand(1, 1, UNITS, generator=generator) * 2 + 0.1  # per-unit rates
    spikes = torch.poisson(rates.expand(4, BINS, UNITS).contiguous(), generator=generator)

    def loss() -> torch.Tensor:
        log_rates = model(spikes, session_id="sess-a", prompt=0).log_rates
        return F.poisson_nll_loss(log_rates, spikes, log_input=True)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    initial = loss().item()
    for _ in range(12):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.6 * initial  # ~0.3x in practice


def test_paper_preset_has_about_12m_shared_parameters():
    model = build_model(PRESETS["paper"], sessions={"s": 700}, num_prompts=4)
    shared = sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith("session_")
    )
    assert 10e6 < shared < 14e6  # 11.3 M at max_bins 512
    assert isinstance(model, NDT1)
    assert isinstance(build_model(tiny_config("ndt2"), sessions={}, num_prompts=1), NDT2)


def test_model_preset():
    small = model_preset("small", architecture="ndt2", position_embedding="rotary")
    assert (small.architecture, small.width, small.num_layers) == ("ndt2", 128, 2)
    assert PRESETS["small"].architecture == "ndt1"  # preset not mutated
    with pytest.raises(SpikemaskError, match=r"unknown model preset 'huge'.*\['paper', 'small'\]"):
        model_preset("huge")
    with pytest.raises(SpikemaskError, match=r"unknown ModelConfig field\(s\) \['depth'\]"):
        model_preset("small", depth=3)
    with pytest.raises(SpikemaskError, match="num_heads"):
        model_preset("small", num_heads=3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architecture": "ndt3"}, "architecture must be one of \\['ndt1', 'ndt2'\\]"),
        ({"position_embedding": "sinusoidal"}, "position_embedding must be one of"),
        ({"width": 30, "num_heads": 4}, "width \\(30\\) must be divisible by num_heads \\(4\\)"),
        ({"width": 0}, "width must be a positive integer, got 0"),
        ({"num_layers": 2.5}, "num_layers must be a positive integer"),
        ({"max_bins": True}, "max_bins must be a positive integer"),
        ({"stitch_width": -1}, "stitch_width must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be a number in \\[0, 1\\)"),
        ({"embed_dropout": -0.1}, "embed_dropout must be a number in \\[0, 1\\)"),
        ({"session_token": "yes"}, "session_token must be a bool"),
        ({"width": 6, "num_heads": 2, "position_embedding": "rotary"}, "even head width"),
        ({"input_scaling": "log"}, "input_scaling"),
        ({"hidden_flags": 1}, "hidden_flags must be a bool"),
        ({"hidden_flags": True, "architecture": "ndt2"}, "hidden_flags needs architecture"),
        ({"tied_stitchers": "yes"}, "tied_stitchers must be a bool"),
        ({"tied_stitchers": True, "architecture": "ndt2"}, "tied_stitchers needs architecture"),
        ({"tied_stitchers": True, "stitch_width": 24}, "stitch_width equal to width"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(SpikemaskError, match=message):
        ModelConfig(**overrides)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sessions": {"a": UNITS}, "num_prompts": 0}, "num_prompts must be >= 1"),
        ({"sessions": {"a": UNITS}, "num_prompts": -1}, "non-negative int"),
        ({"sessions": [("a", UNITS)], "num_prompts": 1}, "sessions must be a mapping"),
        ({"sessions": {"": UNITS}, "num_prompts": 1}, "non-empty string"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(SpikemaskError, match=message):
        NDT1(tiny_config(), **kwargs)
    with pytest.raises(SpikemaskError, match="must be a ModelConfig"):
        build_model({"architecture": "ndt1"}, sessions={}, num_prompts=1)


@pytest.mark.parametrize("architecture", ["ndt1", "ndt2"])
def test_a_new_session_starts_at_its_unit_rates(architecture):
    model = build_model(tiny_config(architecture), sessions={"s": UNITS}, num_prompts=3)
    rates = torch.linspace(0.01, 0.5, UNITS)
    model.set_unit_log_rates("s", rates.log())
    out = model.eval()(poisson_spikes(), session_id="s", prompt=0).log_rates.exp()
    torch.testing.assert_close(out, rates.expand_as(out))
    with pytest.raises(SpikemaskError, match=r"expected \(11,\)"):
        model.set_unit_log_rates("s", torch.zeros(3))


# ----- cheap CPU dropout ------------------------------------------------------------------


def test_cpu_dropout_masks_drop_the_right_share_and_keep_the_mean():
    from spikemask.models.dropout import dropout, keep_mask

    for p in (0.05, 0.1, 0.4):
        torch.manual_seed(0)
        keep, scale = keep_mask((1000, 1000), p)
        dropped = 1.0 - keep.float().mean().item()
        assert abs(dropped - p) < 0.002  # 10^6 draws: sd ~5e-4
        assert scale == pytest.approx(1.0 / (1.0 - round(p * 32768) / 32768))
        x = torch.ones(1000, 1000, dtype=torch.bfloat16)
        out = dropout(x, p, training=True)
        assert out.dtype == torch.bfloat16
        assert abs(out.float().mean().item() - 1.0) < 0.01
        assert set(out.unique().float().tolist()) <= {0.0, float(torch.tensor(scale).bfloat16())}
    torch.manual_seed(3)
    a = keep_mask((5, 7, 9), 0.3)[0]
    torch.manual_seed(3)
    assert torch.equal(a, keep_mask((5, 7, 9), 0.3)[0])  # seeded: the same masks
    assert a.shape == (5, 7, 9)
    assert keep_mask((4, 4), 0.0)[0].all() and not keep_mask((4, 4), 1.0)[0].any()
    x = torch.randn(6, 5, requires_grad=True)
    assert dropout(x, 0.3, training=False) is x  # evaluation: untouched
    out = dropout(x, 0.5, training=True)
    out.sum().backward()
    # the gradient is the mask times the scale: 0 where dropped, 2 where kept
    assert torch.equal(x.grad, torch.where(out != 0, 2.0, 0.0))


def test_scaled_keep_mask_equals_the_converted_mask_times_the_scale_bit_for_bit():
    """The in-place 16-bit multiplier (the fast path for bf16 / fp16) must be exactly the
    mask of keep_mask, converted and scaled: same draws, same kept entries, same values."""
    from spikemask.models.dropout import keep_mask, scaled_keep_mask

    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for p in (0.0, 1e-6, 0.05, 0.1, 0.3, 0.5, 0.99, 1.0):
            for shape in ((16, 4, 9, 9), (5, 7, 3), (1,)):
                torch.manual_seed(11)
                keep, scale = keep_mask(shape, p)
                expected = keep.to(dtype) * scale
                torch.manual_seed(11)
                got = scaled_keep_mask(shape, p, dtype)
                assert got.dtype == dtype and got.shape == expected.shape
                # bit patterns, so that +0 / -0 and rounding of the scale count too
                width = torch.int16 if dtype.itemsize == 2 else torch.int32
                assert torch.equal(got.view(width), expected.view(width)), (dtype, p, shape)


def test_math_attention_equals_sdpa_without_dropout():
    from spikemask.models.layers import _math_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4) for _ in range(3))
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    for mask in (None, allowed):
        torch.testing.assert_close(
            _math_attention(q, k, v, mask, 0.0),
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        )


def _close(actual, expected, tolerance: dict, case) -> None:
    try:
        torch.testing.assert_close(actual, expected, **tolerance)
    except AssertionError as err:
        raise AssertionError(f"{case}: {err}") from None


def test_math_attention_equals_the_plain_formula_forward_and_backward():
    """The written-out attention casts and lays out q / k in one copy and adds the causal
    mask inside the matmul; outputs and gradients must equal the plain formula (fp32 scores
    of the bf16 inputs, masked_fill, softmax, weights in the input dtype) up to the float
    rounding of the matmuls. Exactly on the Intel / AMD Zen 4 CPUs where it was measured;
    on an AVX2-only Zen 3 torch's fp32 matmul kernel depends on the operands' layout, and
    the two differ in the last bit (fp32 ~1e-6, one bf16 step of a gradient)."""
    import math

    from spikemask.models.layers import _math_attention

    def plain(query, key, value, allowed):
        scale = 1.0 / math.sqrt(query.shape[-1])
        scores = (query.float() * scale) @ key.float().transpose(-2, -1)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return scores.softmax(dim=-1).to(value.dtype) @ value

    torch.manual_seed(0)
    allowed = torch.ones(9, 9, dtype=torch.bool).tril()
    allowed[:, :2] = True
    for dtype in (torch.bfloat16, torch.float32):
        # a few steps of the dtype's last bit; a wrong mask, scale or cast is far larger
        last_bit = {"rtol": 4 * torch.finfo(dtype).eps, "atol": 1e-5}
        for head_width in (8, 6):
            qkv = torch.randn(3, 9, 3, 2, head_width, dtype=dtype)
            # heads permuted out of one projection, as SelfAttention makes them
            q, k, v = (t.requires_grad_() for t in qkv.permute(2, 0, 3, 1, 4).unbind(0))
            for mask in (None, allowed):
                case = (dtype, head_width, mask is None)
                ours = _math_attention(q, k, v, mask, 0.0)
                ref = plain(q, k, v, mask)
                _close(ours, ref, last_bit, case)
                g_ours = torch.autograd.grad(ours.float().square().sum(), (q, k, v))
                g_ref = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
                for a, b in zip(g_ours, g_ref, strict=True):
                    _close(a, b, last_bit, case)


def test_attention_scores_in_the_input_dtype():
    """``attention_scores="input"``: in fp32 the same to the bit as the default; in bf16
    the scores and weights are bf16 (close to the fp32-score result, not equal) and the
    gradients flow."""
    from spikemask.models.layers import _math_attention

    torch.manual_seed(0)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    for mask in (None, allowed):
        assert torch.equal(
            _math_attention(q, k, v, mask, 0.0, scores_in_fp32=False),
            _math_attention(q, k, v, mask, 0.0),
        )
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    low = _math_attention(qb, kb, vb, allowed, 0.0, scores_in_fp32=False)
    high = _math_attention(qb, kb, vb, allowed, 0.0)
    assert low.dtype == torch.bfloat16
    assert not torch.equal(low, high)  # the scores really are rounded to bf16
    torch.testing.assert_close(low.float(), high.float(), rtol=0.05, atol=0.03)
    grads = torch.autograd.grad(low.float().square().sum(), (qb, kb, vb))
    assert all(torch.isfinite(g.float()).all() and g.abs().sum() > 0 for g in grads)
    with pytest.raises(SpikemaskError, match="attention_scores"):
        tiny_config(attention_scores="bf8")


def test_attention_scores_choice_changes_nothing_in_fp32_or_evaluation():
    default = tiny_model()
    low = tiny_model(attention_scores="input")
    low.load_state_dict(default.state_dict())
    x = torch.poisson(torch.full((BATCH, BINS, UNITS), 0.5))
    kwargs = {"session_id": "sess-a", "prompt": 0}
    default.eval(), low.eval()
    assert torch.equal(default(x, **kwargs).log_rates, low(x, **kwargs).log_rates)
    default.train(), low.train()
    torch.manual_seed(3)
    first = default(x, **kwargs).log_rates
    torch.manual_seed(3)
    assert torch.equal(first, low(x, **kwargs).log_rates)  # fp32 training: same to the bit


def test_cpu_dropout_choice_changes_masks_not_the_model():
    bits = tiny_model(cpu_dropout="bits")
    plain = tiny_model(cpu_dropout="torch")
    plain.load_state_dict(bits.state_dict())
    x = torch.poisson(torch.full((BATCH, BINS, UNITS), 0.5))
    kwargs = {"session_id": "sess-a", "prompt": 0}
    bits.eval(), plain.eval()
    torch.testing.assert_close(bits(x, **kwargs).log_rates, plain(x, **kwargs).log_rates)
    bits.train(), plain.train()
    torch.manual_seed(1)
    first = bits(x, **kwargs).log_rates
    torch.manual_seed(1)
    assert torch.equal(first, bits(x, **kwargs).log_rates)  # same seed, same masks
    assert not torch.allclose(first, bits.eval()(x, **kwargs).log_rates)  # dropout is on
    with pytest.raises(SpikemaskError, match="cpu_dropout"):
        tiny_config(cpu_dropout="fast")


def test_tied_stitchers_by_default_wherever_the_widths_allow():
    from spikemask.config import RunConfig, run_preset

    assert model_preset("small").resolved_tied_stitchers  # stitch_width = width = 128
    assert model_preset("paper").resolved_tied_stitchers  # stitch_width None = width
    assert not model_preset("small", stitch_width=64).resolved_tied_stitchers
    assert not model_preset("small", tied_stitchers=False).resolved_tied_stitchers
    assert not model_preset("small", architecture="ndt2").resolved_tied_stitchers
    with pytest.raises(SpikemaskError, match="stitch_width equal to width"):
        model_preset("small", stitch_width=64, tied_stitchers=True)
    # a config recorded before the key existed had separate weights: rebuilt untied
    recorded = run_preset("small").to_dict()
    del recorded["model"]["tied_stitchers"]
    assert RunConfig.from_dict(recorded).model.tied_stitchers is False
    assert RunConfig.from_dict(run_preset("small").to_dict()).model.tied_stitchers is None


def test_tied_stitchers_read_in_along_the_read_out():
    model = tiny_model(tied_stitchers=True, stitch_width=None).eval()
    adapter = model.adapter("sess-a")
    # the read-in's weight is the read-out's, transposed: not a parameter of its own
    assert adapter.read_in.weight.shape == (WIDTH, UNITS)
    assert torch.equal(adapter.read_in.weight, adapter.read_out.weight.t())
    keys = [k for k in model.state_dict() if k.startswith("session_adapters.0.")]
    assert "session_adapters.0.read_in.bias" in keys
    assert "session_adapters.0.read_in.weight" not in keys
    names = {n for n, _ in model.named_parameters()}
    assert "session_adapters.0.read_in.bias" in names
    assert any(p is adapter.read_in.bias for p in model.session_parameters("sess-a"))
    spikes = poisson_spikes()
    stitched = spikes @ adapter.read_out.weight + adapter.read_in.bias
    expected = adapter.read_out(model.encode_stitched(stitched, session_id="sess-a", prompt=0))
    out = model(spikes, session_id="sess-a", prompt=0).log_rates
    torch.testing.assert_close(out, expected)
    # the read-out weight learns from both ends: zero the path out and the read-in still
    # carries a gradient to it
    out.sum().backward()
    assert adapter.read_out.weight.grad.abs().sum() > 0
    # a fresh tied session starts with small random read-out weights (not zero: the
    # read-in would see nothing), a copy keeps the tie to its own read-out
    fresh = build_model(
        tiny_config(tied_stitchers=True, stitch_width=None),
        sessions={"sess-a": UNITS},
        num_prompts=3,
        generator=torch.Generator().manual_seed(0),
    ).adapter("sess-a")
    assert 0 < fresh.read_out.weight.std() < 0.05
    assert not fresh.read_in.bias.any()
    twin = copy.deepcopy(model)
    copied = twin.adapter("sess-a")
    with torch.no_grad():
        copied.read_out.weight.add_(1.0)
    assert torch.equal(copied.read_in.weight, copied.read_out.weight.t())
    assert not torch.equal(adapter.read_in.weight, copied.read_in.weight)


def test_hidden_flags_tell_a_hidden_unit_from_a_silent_one():
    model = tiny_model(hidden_flags=True).eval()
    adapter = model.adapter("sess-a")
    assert not adapter.hidden_in.weight.any()  # starts at zero: as if there were no flags
    assert adapter.hidden_in.bias is None
    assert any(p is adapter.hidden_in.weight for p in model.session_parameters("sess-a"))
    spikes = poisson_spikes()
    hidden = torch.zeros(spikes.shape, dtype=torch.bool)
    hidden[:, :, 3] = True
    masked = spikes.masked_fill(hidden, 0)
    plain = model(masked, session_id="sess-a", prompt=0).log_rates
    with torch.no_grad():
        adapter.hidden_in.weight.normal_(generator=torch.Generator().manual_seed(2))
    # nothing hidden (hidden=None or all False): the flags add nothing
    torch.testing.assert_close(model(masked, session_id="sess-a", prompt=0).log_rates, plain)
    none_hidden = torch.zeros_like(hidden)
    out = model(masked, session_id="sess-a", prompt=0, hidden=none_hidden).log_rates
    torch.testing.assert_close(out, plain)
    # the same zeros, once hidden and once silent, now read differently
    flagged = model(masked, session_id="sess-a", prompt=0, hidden=hidden).log_rates
    assert not torch.allclose(flagged, plain, atol=1e-4)
    # and the flag is exactly the column of hidden_in added to the read-in
    stitched = adapter.read_in(masked) + adapter.hidden_in.weight[:, 3]  # 1 hidden: mean = it
    expected = adapter.read_out(model.encode_stitched(stitched, session_id="sess-a", prompt=0))
    torch.testing.assert_close(flagged, expected)
    # several hidden: the mean of their columns, per bin
    hidden[:, 2, :5] = True
    flagged = model(masked, session_id="sess-a", prompt=0, hidden=hidden).log_rates
    columns = adapter.hidden_in.weight.t()  # (N, D_in)
    stitched = adapter.read_in(masked) + columns[3]
    stitched[:, 2] += columns[:5].mean(0) - columns[3]
    expected = adapter.read_out(model.encode_stitched(stitched, session_id="sess-a", prompt=0))
    torch.testing.assert_close(flagged, expected)
    with pytest.raises(SpikemaskError, match="hidden has shape"):
        model(masked, session_id="sess-a", prompt=0, hidden=hidden[:, :, :4])
    # NDT2 and models without flags accept and ignore the argument
    for other in (tiny_model(), tiny_model("ndt2")):
        other.eval()
        torch.testing.assert_close(
            other(masked, session_id="sess-a", prompt=0, hidden=hidden).log_rates,
            other(masked, session_id="sess-a", prompt=0).log_rates,
        )
