"""The default recipe's regularisers: read-out shrinkage, pseudo-count rates, weight EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spikemask.config import RunConfig, load_config, run_preset
from spikemask.errors import SpikemaskError
from spikemask.masking import SCHEMES, MaskingConfig
from spikemask.models import build_model
from spikemask.training.batches import PSEUDO_COUNT, mean_log_rate
from spikemask.training.module import MtMModule
from spikemask.training.run import train

from conftest import TINY_MODEL, make_session

TINY = [
    *TINY_MODEL,
    "data.batch_size=4",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.lr=0.01",
]


def test_mean_log_rate_adds_a_pseudo_count_so_silent_units_stay_plausible() -> None:
    spikes = np.zeros((4, 5, 3), dtype=np.uint16)
    spikes[0, 0, 0] = 2
    rates = np.exp(mean_log_rate(spikes))
    np.testing.assert_allclose(rates, [(2 + PSEUDO_COUNT) / 20, PSEUDO_COUNT / 20, 0.025])


def _module(readout_l2: float, architecture: str = "ndt1") -> tuple[MtMModule, torch.Tensor]:
    config = load_config(
        preset="small", sets=[*TINY, f"model.architecture={architecture}", "model.patch_size=4"]
    )
    model = build_model(config.model, sessions={"s": 6}, num_prompts=len(SCHEMES))
    start = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.05, 0.01, 0.4]))
    model.set_unit_log_rates("s", start)
    train_config = RunConfig.from_dict({"train": {"readout_l2": readout_l2}}).train
    return MtMModule(model, masking=MaskingConfig(), train=train_config), start


def test_readout_penalty_is_zero_at_the_mean_rate_model_and_grows_with_the_weights() -> None:
    module, start = _module(0.5)
    assert float(module.readout_penalty("s", start).detach()) == 0.0  # the mean-rate model
    read_out = module.model.adapter("s").read_out
    with torch.no_grad():
        read_out.weight.fill_(0.1)  # (6, 32): |w_n|^2 = 32 * 0.01
        read_out.bias.add_(0.2)
    expected = 0.5 * 0.5 * (32 * 0.01 + 0.2**2)  # mean over units of |w_n|^2 + drift^2
    assert float(module.readout_penalty("s", start).detach()) == pytest.approx(expected, rel=1e-5)


def test_readout_penalty_of_ndt2_pulls_unit_offsets_to_their_start() -> None:
    module, start = _module(2.0, "ndt2")
    assert float(module.readout_penalty("s", start).detach()) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        module.model.adapter("s").unit_bias.add_(0.3)
    assert float(module.readout_penalty("s", start).detach()) == pytest.approx(
        0.5 * 2.0 * 0.09, rel=1e-5
    )


def test_readout_penalty_shrinks_the_read_out_of_a_trained_model(tmp_path) -> None:
    session = make_session(num_units=13, trials=(24, 6, 6), rate=0.6)
    norms = {}
    for penalty in (0.0, 100.0):
        config = load_config(
            preset="small", sets=[*TINY, "train.max_steps=30", f"train.readout_l2={penalty}"]
        )
        run = train([session], tmp_path / f"l2-{penalty}", config=config).run_dir
        weights = load_file(run / "checkpoints" / "last" / "model.safetensors")
        norms[penalty] = float(weights["session_adapters.0.read_out.weight"].norm())
    assert norms[100.0] < 0.5 * norms[0.0]


def test_readout_l2_trials_scales_the_penalty_inversely_with_the_training_trials() -> None:
    module, _ = _module(0.5)
    assert module.readout_l2_scale(40) == 1.0  # off by default: the same for every session
    module.train_config = RunConfig.from_dict({"train": {"readout_l2_trials": 200}}).train
    assert module.readout_l2_scale(200) == 1.0
    assert module.readout_l2_scale(80) == pytest.approx(2.5)
    assert module.readout_l2_scale(400) == pytest.approx(0.5)


def test_readout_l2_trials_shrinks_a_small_session_harder(tmp_path) -> None:
    session = make_session(num_units=13, trials=(24, 6, 6), rate=0.6)
    norms = {}
    for reference in (24, 2400):  # the penalty as is, and 100x the penalty
        sets = [
            *TINY,
            "train.max_steps=30",
            "train.readout_l2=1",
            f"train.readout_l2_trials={reference}",
        ]
        run = train([session], tmp_path / f"k{reference}", config=load_config(sets=sets)).run_dir
        weights = load_file(run / "checkpoints" / "last" / "model.safetensors")
        norms[reference] = float(weights["session_adapters.0.read_out.weight"].norm())
    assert norms[2400] < 0.5 * norms[24]


def test_ema_checkpoints_hold_the_average_and_a_resumed_run_keeps_it(tmp_path) -> None:
    session = make_session(num_units=13, trials=(24, 6, 6), rate=0.6)
    sets = [*TINY, "train.max_steps=24", "train.max_epochs=null"]
    plain = train([session], tmp_path / "plain", config=load_config(sets=sets)).run_dir
    averaged = train(
        [session], tmp_path / "ema", config=load_config(sets=[*sets, "train.ema_decay=0.9"])
    ).run_dir
    a = load_file(plain / "checkpoints" / "last" / "model.safetensors")
    b = load_file(averaged / "checkpoints" / "last" / "model.safetensors")
    differs = [k for k in a if not torch.equal(a[k], b[k])]
    assert differs  # same seed and steps: only the averaging changes the saved weights
    ckpt = torch.load(
        averaged / "checkpoints" / "trainer" / "last.ckpt", weights_only=False, map_location="cpu"
    )
    assert set(ckpt["spikemask_ema"]) == set(b)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_ema_decay_must_be_in_range(value: float) -> None:
    with pytest.raises(SpikemaskError, match="ema_decay"):
        load_config(sets=[f"train.ema_decay={value}"])


def test_readout_l2_must_not_be_negative() -> None:
    with pytest.raises(SpikemaskError, match="readout_l2"):
        load_config(sets=["train.readout_l2=-0.01"])


def test_the_default_recipe_turns_the_regularisers_on() -> None:
    for preset in ("small", "paper"):
        train_config = run_preset(preset).train
        assert train_config.readout_l2 > 0


def test_resume_with_ema_equals_uninterrupted(tmp_path) -> None:
    from test_training import StopAfter

    session = make_session()
    config = load_config(sets=[*TINY, "train.max_epochs=4", "train.ema_decay=0.8"])
    full = train([session], tmp_path / "full", config=config)
    train([session], tmp_path / "cut", config=config, callbacks=[StopAfter(2)])
    resumed = train([session], tmp_path / "cut", config=config, resume=True)
    a = load_file(full.run_dir / "checkpoints" / "last" / "model.safetensors")
    b = load_file(resumed.run_dir / "checkpoints" / "last" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
