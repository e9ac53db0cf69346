"""Fast-training paths on the CPU: device-side masks, deferred divergence checks, the
validation interval, gradient accumulation, thread count and precision choices."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from spikemask.config import load_config
from spikemask.errors import SpikemaskError, SpikemaskWarning
from spikemask.masking import SCHEMES, MaskingConfig, MaskingMixture, _draw
from spikemask.training import speed
from spikemask.training.resume import DivergenceGuard, TrainingDiverged
from spikemask.training.run import train

from conftest import TINY_MODEL, make_session

REGION_IDS = torch.tensor([0, 0, 1, 1, 1, 2, -1, 2, 2, 0, 1, 3, 3])
SHAPE = (5, 7, 13)


def _all_masks(mixture: MaskingMixture, seed: int) -> list[torch.Tensor]:
    masks = []
    for scheme in SCHEMES:
        spec = mixture.build(
            scheme, SHAPE, generator=torch.Generator().manual_seed(seed), region_ids=REGION_IDS
        )
        masks += [spec.hidden, spec.scored]
    return masks


def test_device_draws_run_on_the_cpu_and_pick_what_the_reference_picks(monkeypatch):
    """The accelerator path (ranks instead of top-k, no host reads) forced on the CPU: with
    the same random scores it picks exactly the reference positions."""
    mixture = MaskingMixture(MaskingConfig(schemes=SCHEMES, patch_size=5))
    reference = _all_masks(mixture, seed=3)
    monkeypatch.setattr(_draw, "_on_host", lambda generator: False)
    device_path = _all_masks(mixture, seed=3)
    for expected, got in zip(reference, device_path, strict=True):
        assert torch.equal(expected, got)
    assert any(m.any() for m in device_path)


def test_choose_per_row_on_device_exact_counts_within_eligible():
    eligible = torch.rand(6, 17, generator=torch.Generator().manual_seed(0)) > 0.3
    counts = eligible.sum(1) // 2
    picked = _draw._choose_per_row_on_device(eligible, counts, torch.Generator().manual_seed(1))
    assert torch.equal(picked.sum(1), counts)
    assert not (picked & ~eligible).any()


def test_mask_generator_draws_the_mask_and_generator_the_scheme():
    mixture = MaskingMixture(MaskingConfig())
    plain = mixture.sample(SHAPE, generator=torch.Generator().manual_seed(4), region_ids=REGION_IDS)
    split = mixture.sample(
        SHAPE,
        generator=torch.Generator().manual_seed(4),
        region_ids=REGION_IDS,
        mask_generator=torch.Generator().manual_seed(9),
    )
    assert split.scheme == plain.scheme
    assert not torch.equal(split.hidden, plain.hidden)


class _Trainer(SimpleNamespace):
    global_step: int


def test_deferred_divergence_check_raises_at_the_next_read():
    guard = DivergenceGuard(lr=1e-3, defer=True, check_every_n_steps=4)
    trainer = _Trainer(global_step=1)
    guard.on_train_batch_end(trainer, None, torch.tensor(0.5), None, 0)
    trainer.global_step = 2
    guard.on_train_batch_end(trainer, None, torch.tensor(math.nan), None, 1)  # not read yet
    trainer.global_step = 3
    with pytest.raises(TrainingDiverged, match="between steps 1 and 3"):
        guard.on_validation_start(trainer, None)
    guard.check_now(trainer)  # nothing pending any more


def test_deferred_divergence_check_reads_every_n_steps():
    guard = DivergenceGuard(lr=1e-3, defer=True, check_every_n_steps=2)
    with pytest.raises(TrainingDiverged, match="not finite"):
        guard.on_train_batch_end(_Trainer(global_step=2), None, torch.tensor(math.inf), None, 0)


def test_validation_interval():
    assert speed.validation_interval(None, 11, 1) == (None, 1)
    assert speed.validation_interval(100, 11, 1) == (100, None)
    assert speed.validation_interval(100, 11, 2) == (200, None)
    assert speed.validation_interval(100, 5000, 1) == (5000, None)  # at most once per epoch


def test_threads_follow_free_cores_and_are_restored():
    before = torch.get_num_threads()
    assert 1 <= speed.free_cores() <= max(1, len(__import__("os").sched_getaffinity(0)))
    with speed.torch_threads(1) as count:
        assert count == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_default_threads_respect_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert speed.default_threads() == 1
    with speed.torch_threads(None) as count:
        assert count == 1 == torch.get_num_threads()
    monkeypatch.setattr(speed, "free_cores", lambda: 7)
    for unset in ("", "zero", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert speed.default_threads() == 7
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert speed.default_threads() == 7


def test_precision_auto(monkeypatch):
    assert speed.resolve_precision("32") == "32-true"
    assert speed.resolve_precision("bf16-mixed") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(speed, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(speed, "CPU_BF16_BY_DEFAULT", True)
    assert speed.resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(speed, "CPU_BF16_BY_DEFAULT", False)
    assert speed.resolve_precision("auto") == "32-true"


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch):
    # there bf16 matmuls are emulated: ~8x slower steps (BENCHMARKS.md §8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(speed, "cpu_supports_bf16", lambda: False)
    with pytest.warns(SpikemaskWarning, match="without bf16 instructions.*precision=auto"):
        assert speed.resolve_precision("bf16-mixed") == "bf16-mixed"  # still honoured
    assert speed.resolve_precision("auto") == "32-true"
    with warnings.catch_warnings():  # bench speed's report, after training has warned
        warnings.simplefilter("error")
        assert speed.resolve_precision("bf16-mixed", warn=False) == "bf16-mixed"
    monkeypatch.setattr(speed, "cpu_supports_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert speed.resolve_precision("bf16-mixed") == "bf16-mixed"
        assert speed.resolve_precision("32") == "32-true"


def _tiny(*extra: str):
    return load_config(
        preset="small",
        sets=[
            *TINY_MODEL,
            "data.batch_size=4",
            "train.progress_bar=false",
            "train.tensorboard=false",
            "train.log_every_n_steps=1",
            *extra,
        ],
    )


def _val_steps(run_dir) -> list[int]:
    frames = [pd.read_csv(p) for p in (run_dir / "logs" / "csv").glob("version_*/metrics.csv")]
    frame = pd.concat(frames)
    return sorted(int(s) for s in frame.dropna(subset=["val_loss"])["step"])


@pytest.mark.parametrize(
    ("every", "expected"),
    [("null", [2, 5, 8, 11]), ("5", [4, 9, 12])],
)
def test_validation_every_n_steps_and_at_the_end(tmp_path, every, expected):
    # 9 training trials, batch 4: 3 steps per epoch; the final validation (after training)
    # logs step 12, those inside the loop the step before their own
    config = _tiny(
        "train.max_steps=12", "train.max_epochs=null", f"train.val_every_n_steps={every}"
    )
    result = train([make_session()], tmp_path / "run", config=config)
    assert result.steps == 12
    assert _val_steps(tmp_path / "run") == expected
    assert math.isfinite(result.best_val_loss)


def test_gradient_accumulation_trains(tmp_path):
    config = _tiny("train.max_steps=3", "train.max_epochs=null", "train.accumulate_grad_batches=2")
    result = train([make_session()], tmp_path / "run", config=config)
    assert result.steps == 3
    assert math.isfinite(result.best_val_loss)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("train.accumulate_grad_batches=0", "accumulate_grad_batches"),
        ("train.val_every_n_steps=0", "val_every_n_steps"),
        ("train.num_threads=0", "num_threads"),
        ("train.compile=maybe", "expected true or false"),
    ],
)
def test_bad_speed_settings(key, message):
    with pytest.raises(SpikemaskError, match=message):
        load_config(sets=[key])


@pytest.mark.slow
def test_compiled_encoder_gives_the_same_outputs():
    from spikemask.models import build_model

    config = _tiny()
    model = build_model(config.model, sessions={"s": 11}, num_prompts=len(SCHEMES))
    spikes = torch.poisson(torch.full((3, 7, 11), 0.5), generator=torch.Generator().manual_seed(0))
    eager = model(spikes, session_id="s", prompt=1).log_rates
    speed.compile_encoder(model)
    compiled = model(spikes, session_id="s", prompt=1).log_rates
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_batches_carry_integer_counts_made_float_after_the_transfer():
    import numpy as np

    from spikemask.models import build_model
    from spikemask.training.batches import BatchKey, SessionTrialsDataset
    from spikemask.training.module import MtMModule

    session = make_session()
    train_set = session.split("train")
    dataset = SessionTrialsDataset(["tiny"], [train_set], [np.zeros(11, dtype=np.int64)])
    item = dataset[BatchKey(session=0, rows=(2, 0), offset=0, global_size=2, batch_id=0)]
    assert item["spikes"].dtype == torch.int16  # stored as uint16: half the bytes of float32
    config = _tiny()
    model = build_model(config.model, sessions={"tiny": 11}, num_prompts=len(SCHEMES))
    module = MtMModule(model, masking=config.masking, train=config.train)
    moved = module.on_after_batch_transfer(item, 0)
    expected = torch.from_numpy(train_set.spikes[[2, 0]].astype(np.float32))
    assert moved["spikes"].dtype == torch.float32
    assert torch.equal(moved["spikes"], expected)


def test_fused_adamw_is_used_on_the_cpu_and_matches_the_default_update():
    """CPU training takes the fused AdamW (3-4x cheaper than torch's foreach default); its
    parameters after a few steps equal the foreach ones up to float rounding."""
    from spikemask.training.module import adamw, use_fused_adamw

    params = [nn.Parameter(torch.ones(2, 2))]
    assert use_fused_adamw(params, "bf16-mixed") and use_fused_adamw(params, "32-true")
    assert not use_fused_adamw(params, "16-mixed") and not use_fused_adamw([], "32-true")
    torch.manual_seed(0)
    start = [torch.randn(40, 30), torch.randn(30)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(5)]
    finals = []
    for fused in (True, False):
        weights = [nn.Parameter(t.clone()) for t in start]
        groups = [
            {"params": [weights[0]], "weight_decay": 0.1},
            {"params": [weights[1]], "weight_decay": 0.0},
        ]
        if fused:
            optimizer = adamw(groups, lr=1e-2, weight_decay=0.1, precision="bf16-mixed")
            assert optimizer.defaults["fused"]
        else:
            optimizer = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1, foreach=True)
        for step_grads in grads:
            for weight, grad in zip(weights, step_grads, strict=True):
                weight.grad = grad.clone()
            optimizer.step()
        finals.append([w.detach() for w in weights])
    plain = adamw(
        [nn.Parameter(torch.ones(2))], lr=1.0, weight_decay=0.0, precision="32-true", fused=False
    )
    assert not plain.defaults["fused"]  # train.fused_adamw=false: torch's default AdamW
    with pytest.raises(SpikemaskError, match="fused_adamw"):
        adamw(params, lr=1.0, weight_decay=0.0, precision="16-mixed", fused=True)
    for fused_weight, foreach_weight, first in zip(*finals, start, strict=True):
        assert (fused_weight - first).abs().mean() > 1e-3  # the step moved the weights
        torch.testing.assert_close(fused_weight, foreach_weight, rtol=1e-6, atol=1e-7)


def test_fused_adamw_trains_with_bf16_and_gradient_clipping(tmp_path, monkeypatch):
    """Lightning refuses to clip gradients for an optimiser that says it unscales inside
    step(); the fused AdamW (forced here on the CPU) must train with clipping anyway."""
    from spikemask.training import module

    monkeypatch.setattr(module, "use_fused_adamw", lambda params, precision: True)
    config = _tiny(
        "train.max_steps=2",
        "train.max_epochs=null",
        "train.precision=bf16-mixed",
        "train.gradient_clip=1.0",
    )
    result = train([make_session()], tmp_path / "run", config=config)
    assert result.steps == 2
    assert math.isfinite(result.best_val_loss)
