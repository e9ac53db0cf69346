"""Training, checkpoints, resume and fine-tuning on tiny sessions (CPU, seconds)."""

from __future__ import annotations

import json
import warnings

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from spikemask.api import load_run
from spikemask.config import load_config, run_preset
from spikemask.errors import SpikemaskError
from spikemask.training.checkpoint import load_checkpoint
from spikemask.training.finetune import finetune
from spikemask.training.run import train

from conftest import TINY_MODEL, make_session

TINY = [
    *TINY_MODEL,
    "data.batch_size=4",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every_n_steps=1",
    "train.lr=0.01",
    # these tests follow validation epoch by epoch (the default interval is by steps)
    "train.val_every_n_steps=null",
]


def tiny_config(*extra: str):
    return load_config(preset="small", sets=[*TINY, *extra])


def _losses(run_dir, column="train_loss"):
    parts = sorted(
        (run_dir / "logs" / "csv").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[1]),
    )
    frame = pd.concat([pd.read_csv(p) for p in parts])
    return frame[column].dropna().to_numpy()


def test_loss_decreases_on_a_session_with_structure(tmp_path):
    session = make_session(num_units=13, trials=(24, 6, 6), rate=0.6)
    result = train([session], tmp_path / "run", config=tiny_config("train.max_epochs=8"))
    losses = _losses(result.run_dir)
    assert losses[-6:].mean() < losses[:6].mean() - 0.02
    val = _losses(result.run_dir, "val_loss")
    assert val[-1] < val[0]
    assert (result.run_dir / "checkpoints" / "best" / "model.safetensors").is_file()
    assert result.best_val_loss == pytest.approx(val.min(), rel=1e-5)


def test_select_by_unit_bps_keeps_the_checkpoint_with_the_best_per_unit_score(tmp_path):
    session = make_session(num_units=13, trials=(24, 6, 6), rate=0.6)
    config = tiny_config("train.max_epochs=8", "train.select_by=unit_bps")
    result = train([session], tmp_path / "run", config=config)
    parts = sorted((result.run_dir / "logs" / "csv").glob("version_*/metrics.csv"))
    frame = pd.concat([pd.read_csv(p) for p in parts]).dropna(subset=["val_unit_bps"])
    row = frame.loc[frame["val_unit_bps"].idxmax()]
    # (whether the two criteria pick different validations here depends on the CPU's
    # float rounding; the test below tells them apart with given metrics)
    state = json.loads((result.run_dir / "checkpoints" / "best" / "state.json").read_text())
    assert state["select_by"] == "unit_bps"
    assert state["step"] == int(row["step"]) + 1  # logged at the step before it completes
    assert state["val_unit_bps"] == pytest.approx(row["val_unit_bps"], rel=1e-5)
    # the reported validation loss is that of the kept checkpoint, not the lowest one
    assert result.best_val_loss == pytest.approx(row["val_loss"], rel=1e-5)
    with pytest.raises(SpikemaskError, match=r"train\.select_by='bps'; expected one of"):
        tiny_config("train.select_by=bps")


def test_val_unit_bps_is_the_mean_of_each_units_bits_per_spike(tmp_path, monkeypatch):
    """The logged per-unit validation score against a numpy computation of the same."""
    from spikemask.training.module import MtMModule

    seen: dict[int, list] = {}
    original = MtMModule._log_rates

    def recording(self, batch, spec):
        log_rates = original(self, batch, spec)
        if not self.training:
            null = batch["null_log_rates"].expand_as(batch["spikes"])
            entry = [t.detach().double().numpy() for t in (log_rates, null, batch["spikes"])]
            seen.setdefault(self.global_step, []).append((*entry, spec.scored.numpy()))
        return log_rates

    monkeypatch.setattr(MtMModule, "_log_rates", recording)
    session = make_session(num_units=13, trials=(24, 6, 6), rate=0.6)
    result = train([session], tmp_path / "run", config=tiny_config("train.max_epochs=2"))
    logged = _losses(result.run_dir, "val_unit_bps")
    assert len(logged) == 2
    last = seen[max(seen)]
    nll = np.zeros((2, 13))
    spikes = np.zeros(13)
    for log_rates, null, counts, scored in last:
        for row, rate in enumerate((log_rates, null)):
            nll[row] += ((np.exp(rate) - counts * rate) * scored).sum((0, 1))
        spikes += (counts * scored).sum((0, 1))
    keep = spikes > 0
    expected = ((nll[1] - nll[0])[keep] / (spikes[keep] * np.log(2))).mean()
    assert logged[-1] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_same_seed_same_run_different_seed_different(tmp_path):
    session = make_session()
    runs = [
        train(
            [session],
            tmp_path / f"r{i}",
            config=tiny_config("train.max_steps=4", f"train.seed={seed}"),
        )
        for i, seed in enumerate([3, 3, 4])
    ]
    weights = [load_file(r.run_dir / "checkpoints" / "last" / "model.safetensors") for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


class StopAfter(L.Callback):
    """Simulates an interruption: stop after ``epochs`` epochs of a longer run."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.parametrize("budget", ["train.max_epochs=4", "train.max_steps=12"])
def test_resume_equals_uninterrupted(tmp_path, budget):
    # a clean stop at an epoch boundary (the resume state written at the end of training)
    # resumes into the same epoch count and bit-identical weights, with either budget
    session = make_session()
    extra = (budget, "model.dropout=0.2")
    full = train([session], tmp_path / "full", config=tiny_config(*extra))
    train([session], tmp_path / "cut", config=tiny_config(*extra), callbacks=[StopAfter(2)])
    resumed = train([session], tmp_path / "cut", config=tiny_config(*extra), resume=True)
    assert (resumed.epochs, resumed.steps) == (full.epochs, full.steps) == (4, 12)
    a = load_file(full.run_dir / "checkpoints" / "last" / "model.safetensors")
    b = load_file(resumed.run_dir / "checkpoints" / "last" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    np.testing.assert_allclose(
        _losses(full.run_dir, "val_loss"), _losses(resumed.run_dir, "val_loss"), rtol=1e-5
    )


def test_resume_errors(tmp_path):
    session = make_session()
    with pytest.raises(SpikemaskError, match="holds no interrupted run"):
        train([session], tmp_path / "none", config=tiny_config("train.max_steps=1"), resume=True)
    train([session], tmp_path / "r", config=tiny_config("train.max_steps=1"))
    with pytest.raises(SpikemaskError, match="is not empty"):
        train([session], tmp_path / "r", config=tiny_config("train.max_steps=1"))
    with pytest.raises(SpikemaskError, match="configuration differs"):
        train([session], tmp_path / "r", config=tiny_config("train.max_steps=2"), resume=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained") / "run"
    train([make_session()], folder, config=tiny_config("train.max_steps=3"))
    return folder


def test_checkpoint_round_trip_gives_identical_outputs(trained_run, tmp_path):
    session = make_session()
    model = load_run(trained_run)
    again = load_run(trained_run)
    a = model.predict(session, masking="neuron", seed=1)
    b = again.predict(session, masking="neuron", seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 7, 11) and np.isfinite(a).all()
    assert model.latents(session).shape == (5, 7, 32)
    checkpoint = load_checkpoint(trained_run / "checkpoints" / "best")
    assert list(checkpoint.sessions) == ["tiny"] and "VISp" in checkpoint.regions


def test_corrupted_and_mismatched_checkpoints(trained_run, tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(trained_run / "checkpoints" / "best", folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SpikemaskError, match="corrupted"):
        load_checkpoint(folder)
    shutil.rmtree(folder)
    shutil.copytree(trained_run / "checkpoints" / "best", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["width"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpikemaskError, match="different config or vocabulary"):
        load_checkpoint(folder)
    shutil.rmtree(folder)
    shutil.copytree(trained_run / "checkpoints" / "best", folder)
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(SpikemaskError, match="not a spikemask checkpoint"):
        load_checkpoint(folder)
    (folder / "vocab.json").unlink()
    with pytest.raises(SpikemaskError, match=r"vocab\.json' is missing"):
        load_checkpoint(folder)


def test_unknown_session_and_wrong_units(trained_run):
    model = load_run(trained_run)
    with pytest.raises(SpikemaskError, match="'other' is not in this model"):
        model.predict(make_session(session_id="other"))
    with pytest.raises(SpikemaskError, match="has 12 units but the model's layers for it have 11"):
        model.predict(make_session(num_units=12))


def test_finetune_adds_a_session_and_session_mode_freezes_the_rest(trained_run, tmp_path):
    new = make_session(session_id="new", num_units=9, seed=5)
    config = tiny_config("train.max_steps=3")
    result = finetune(trained_run, [new], tmp_path / "ft", mode="session", config=config)
    before = load_file(trained_run / "checkpoints" / "best" / "model.safetensors")
    after = load_checkpoint(result.run_dir / "checkpoints" / "last")
    assert list(after.sessions) == ["tiny", "new"]
    state = after.model.state_dict()
    shared = [k for k in before if k in state]
    assert shared and all(torch.equal(before[k], state[k]) for k in shared)
    assert len(state) > len(before)
    model = load_run(result.run_dir, which="last")
    assert model.predict(new).shape == (5, 7, 9)


def test_finetune_full_changes_shared_weights(trained_run, tmp_path):
    new = make_session(session_id="new", num_units=9, seed=5)
    config = tiny_config("train.max_steps=3")
    result = finetune(trained_run, [new], tmp_path / "ft", mode="full", config=config, device="cpu")
    before = load_file(trained_run / "checkpoints" / "best" / "model.safetensors")
    last = load_checkpoint(result.run_dir / "checkpoints" / "last")
    after = last.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (last.config.train.accelerator, str(last.config.train.devices)) == ("cpu", "1")


def test_finetune_staged_trains_session_layers_first_then_everything(trained_run, tmp_path):
    new = make_session(session_id="new", num_units=9, seed=5)
    before = load_file(trained_run / "checkpoints" / "best" / "model.safetensors")

    def tuned(steps: int, name: str, *sets: str) -> dict:
        config = tiny_config(f"train.max_steps={steps}", "train.weight_decay=0.1", *sets)
        result = finetune(trained_run, [new], tmp_path / name, config=config)  # the default
        assert json.loads((result.run_dir / "run.json").read_text())["mode"] == "staged"
        return load_checkpoint(result.run_dir / "checkpoints" / "last").model.state_dict()

    # 3 steps: the first (progress 0 < 1/4) leaves the shared weights alone (weight decay
    # included), the new session's layers learn
    first = tuned(1, "one")
    assert all(torch.equal(before[k], first[k]) for k in before)
    fresh = [k for k in first if k not in before]
    assert fresh
    # later steps train everything
    later = tuned(8, "eight")
    assert any(not torch.equal(before[k], later[k]) for k in before)
    # train.staged_fraction sets the frozen share: at 0.9 all 8 steps (progress <= 7/8)
    # leave the shared weights alone
    frozen = tuned(8, "eight-frozen", "train.staged_fraction=0.9")
    assert all(torch.equal(before[k], frozen[k]) for k in before)
    assert any(not torch.equal(first[k], frozen[k]) for k in fresh)
    with pytest.raises(SpikemaskError, match=r"train.staged_fraction=1.0; expected a value in"):
        tiny_config("train.staged_fraction=1")


def test_finetune_shared_lr_scale_slows_only_the_pretrained_weights(trained_run, tmp_path):
    from lightning.pytorch.callbacks import Callback

    new = make_session(session_id="new", num_units=9, seed=5)
    before = load_file(trained_run / "checkpoints" / "best" / "model.safetensors")

    class PeakLearningRates(Callback):
        def on_train_start(self, trainer, pl_module):
            groups = trainer.optimizers[0].param_groups
            self.found = [(len(g["params"]), g["initial_lr"]) for g in groups]

    def moved(scale: float) -> tuple[float, list]:
        config = tiny_config("train.max_steps=4", f"train.shared_lr_scale={scale}")
        seen = PeakLearningRates()
        run = tmp_path / str(scale)
        result = finetune(trained_run, [new], run, mode="full", config=config, callbacks=[seen])
        last = load_checkpoint(result.run_dir / "checkpoints" / "last")
        after = last.model.state_dict()
        assert last.config.train.shared_lr_scale == scale  # recorded in the run's config
        return max((after[k] - before[k]).abs().max().item() for k in before), seen.found

    lr = tiny_config().train.lr
    shared_full, groups_full = moved(1.0)
    shared_slow, groups_slow = moved(0.01)
    tiny = load_checkpoint(trained_run / "checkpoints" / "best").model.adapter("tiny")
    new_layers = len(list(tiny.parameters()))
    assert groups_full == [(len(before) + new_layers, lr)]  # one learning rate for all
    assert groups_slow == [(new_layers, lr), (len(before), lr * 0.01)]
    # the default: the pre-trained weights learn at twice the rate of the new layers
    assert tiny_config().train.shared_lr_scale == 2.0
    shared_fast, groups_fast = moved(2.0)
    assert shared_fast > shared_full  # and move further than at one rate
    assert groups_fast == [(new_layers, lr), (len(before), lr * 2.0)]
    # AdamW's step is ~lr whatever the gradient: the shared weights move ~100x less
    assert 0 < shared_slow < shared_full / 20
    with pytest.raises(SpikemaskError, match="shared_lr_scale"):
        tiny_config("train.shared_lr_scale=0")


def _optimizer_groups(run, *sets: str, pretrained=None) -> list[tuple[float, float, list]]:
    """(initial lr, weight decay, sorted parameter names) of each optimiser group of a
    2-step training (``pretrained=None``) or full fine-tuning of ``pretrained``."""
    from lightning.pytorch.callbacks import Callback

    class Groups(Callback):
        def on_train_start(self, trainer, pl_module):
            names = {id(p): n for n, p in pl_module.named_parameters()}
            self.found = [
                (g["initial_lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
                for g in trainer.optimizers[0].param_groups
            ]

    config = tiny_config("train.max_steps=2", *sets)
    seen = Groups()
    if pretrained is None:
        train([make_session()], run, config=config, callbacks=[seen])
    else:
        new = make_session(session_id="new", num_units=9, seed=5)
        finetune(pretrained, [new], run, mode="full", config=config, callbacks=[seen])
    return seen.found


def test_weight_decay_scope_leaves_biases_and_gains_undecayed(trained_run, tmp_path):
    def groups(scope: str, *, pretrained=None) -> list:
        run = tmp_path / f"{scope}-{pretrained is not None}"
        sets = ("train.weight_decay=0.3", "train.finetune_weight_decay=null")
        scoped = f"train.weight_decay_scope={scope}"
        return _optimizer_groups(run, *sets, scoped, pretrained=pretrained)

    assert tiny_config().train.weight_decay_scope == "all"
    ((lr, decay, names),) = groups("all")  # one group, every parameter decayed
    assert decay == 0.3 and any("bias" in n for n in names)
    found = groups("matrices")
    assert [g[1] for g in found] == [0.3, 0.0]
    assert any("read_out.weight" in n for n in found[0][2])
    assert all("bias" not in n and "norm" not in n for n in found[0][2])
    assert any("read_out.bias" in n for n in found[1][2])
    assert any("norm" in n for n in found[1][2])
    # fine-tuning keeps its two learning rates, each split by decay
    lr = tiny_config().train.lr
    tuned = groups("matrices", pretrained=trained_run)
    assert [(g[0], g[1]) for g in tuned] == [(lr, 0.3), (lr, 0.0), (2 * lr, 0.3), (2 * lr, 0.0)]
    # the new session's layers (the pre-trained model has one session, adapter 0)
    assert all("session_adapters.1." in n for g in tuned[:2] for n in g[2])
    with pytest.raises(SpikemaskError, match=r"weight_decay_scope='biases'; expected one of"):
        tiny_config("train.weight_decay_scope=biases")


def test_finetune_weight_decay_applies_to_finetuning_only(trained_run, tmp_path):
    def decays(*sets: str, pretrained=None) -> list[float]:
        run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        found = _optimizer_groups(run, "train.weight_decay=0.05", *sets, pretrained=pretrained)
        return sorted({decay for _, decay, _ in found})

    assert tiny_config().train.finetune_weight_decay == 0.3
    assert run_preset("paper").train.finetune_weight_decay is None  # the paper's 0.01 throughout
    # training (from scratch or pre-training) keeps train.weight_decay
    assert decays() == [0.05]
    # fine-tuning uses its own, for the new layers and the pre-trained ones alike
    assert decays(pretrained=trained_run) == [0.3]
    assert decays("train.finetune_weight_decay=0.2", pretrained=trained_run) == [0.2]
    # None: fine-tuning falls back to train.weight_decay
    assert decays("train.finetune_weight_decay=null", pretrained=trained_run) == [0.05]
    # with matrices only, the undecayed groups stay at 0
    found = decays("train.weight_decay_scope=matrices", pretrained=trained_run)
    assert found == [0.0, 0.3]
    with pytest.raises(SpikemaskError, match=r"finetune_weight_decay=-0.1; expected a value >= 0"):
        tiny_config("train.finetune_weight_decay=-0.1")


def test_finetune_shrink_mixes_pretrained_and_fresh_weights(trained_run):
    from spikemask.training.finetune import add_sessions, shrink_towards_fresh

    def start(*sets: str):
        checkpoint = load_checkpoint(trained_run / "checkpoints" / "best")
        add_sessions(checkpoint, [make_session(session_id="new", num_units=9, seed=5)])
        config = tiny_config(*sets)
        own = list(checkpoint.model.session_parameters("new"))
        snapshot = {k: v.clone() for k, v in checkpoint.model.state_dict().items()}
        shrink_towards_fresh(checkpoint, config, keep=own)
        return snapshot, checkpoint.model.state_dict(), checkpoint

    pre, half, ck = start("train.finetune_shrink=0.5")
    _, zero, _ = start("train.finetune_shrink=0")
    _, again, _ = start("train.finetune_shrink=0.5")
    _, other_seed, _ = start("train.finetune_shrink=0.5", "train.seed=7")
    own = {id(p) for p in ck.model.session_parameters("new")}
    new_keys = {k for k, p in ck.model.named_parameters() if id(p) in own}
    assert new_keys  # the new session's layers exist and are left alone
    shared = [k for k, _ in ck.model.named_parameters() if k not in new_keys]
    for k in new_keys:
        assert torch.equal(half[k], pre[k])
    for k in shared:
        # s * pre-trained + (1 - s) * fresh, with fresh = the s = 0 start
        torch.testing.assert_close(half[k], 0.5 * pre[k] + 0.5 * zero[k])
        assert torch.equal(half[k], again[k])  # same seed, same start
    assert any(not torch.equal(half[k], other_seed[k]) for k in shared)
    assert any(not torch.equal(zero[k], pre[k]) for k in shared)
    with pytest.raises(SpikemaskError, match="finetune_shrink"):
        tiny_config("train.finetune_shrink=1.5")


def test_finetune_errors(trained_run, tmp_path):
    with pytest.raises(SpikemaskError, match="already in the model"):
        finetune(trained_run, [make_session()], tmp_path / "a", config=tiny_config())
    with pytest.raises(SpikemaskError, match="does not exist"):
        finetune(trained_run, [tmp_path / "missing"], tmp_path / "b", config=tiny_config())
    with pytest.raises(SpikemaskError, match="mode='half'"):
        finetune(trained_run, [make_session(session_id="x")], tmp_path / "c", mode="half")
    with pytest.raises(SpikemaskError, match=r"run folder .* does not exist"):
        finetune(tmp_path / "norun", [make_session(session_id="x")], tmp_path / "d")


def test_region_masking_needs_regions(tmp_path):
    session = make_session(regions=("root",))
    with pytest.raises(SpikemaskError, match="has 0 labelled region"):
        train([session], tmp_path / "r", config=tiny_config("train.max_steps=1"))
    # without region schemes the same session trains
    result = train(
        [session],
        tmp_path / "t",
        config=tiny_config("train.max_steps=1", "masking.schemes=[temporal]"),
    )
    assert result.steps == 1


def test_two_sessions_with_equal_unit_counts_get_their_own_layers(tmp_path):
    a, b = make_session(session_id="a"), make_session(session_id="b", seed=2)
    result = train([a, b], tmp_path / "r", config=tiny_config("train.max_steps=4"))
    checkpoint = load_checkpoint(result.run_dir / "checkpoints" / "last")
    assert list(checkpoint.sessions) == ["a", "b"]
    x = torch.as_tensor(a.split("test").spikes, dtype=torch.float32)
    out_a = checkpoint.model(x, session_id="a", prompt=1).log_rates
    out_b = checkpoint.model(x, session_id="b", prompt=1).log_rates
    assert not torch.allclose(out_a, out_b)


def test_one_cycle_schedule_shape():
    from spikemask.training.module import one_cycle_factor, schedule_progress

    assert one_cycle_factor(0.0, 0.15) == pytest.approx(0.04)
    assert one_cycle_factor(0.15, 0.15) == pytest.approx(1.0)
    assert one_cycle_factor(0.575, 0.15) == pytest.approx(0.5 + 0.5e-3)
    assert one_cycle_factor(1.0, 0.15) == pytest.approx(1e-3)
    by_steps = schedule_progress(total_steps=200, budget_s=None)
    assert by_steps(50) == 0.25 and by_steps(400) == 1.0
    by_time = schedule_progress(total_steps=float("inf"), budget_s=1e-9)
    assert by_time(3) == 1.0  # the time budget is already spent


def test_checkpoint_selection_follows_select_by(tmp_path, monkeypatch):
    # the validation loss and the per-unit score disagree on which validation is best
    from types import SimpleNamespace

    from spikemask.training.model_folder import ModelFolderCheckpoint

    validations = [(0.30, 0.01), (0.25, 0.02), (0.27, 0.05), (0.26, 0.03)]  # (loss, unit bps)
    for select_by, best_at, best_loss in (("val_loss", 1, 0.25), ("unit_bps", 2, 0.27)):
        config = tiny_config(f"train.select_by={select_by}")
        saver = ModelFolderCheckpoint(tmp_path, config, sessions={}, regions=None)
        saved: list[tuple[str, int]] = []
        monkeypatch.setattr(
            saver,
            "_save",
            lambda name, trainer, module, val, saved=saved: saved.append((name, trainer.step)),
        )
        for step, (loss, unit_bps) in enumerate(validations):
            metrics = {"val_loss": loss, "val_null_loss": 0.31, "val_unit_bps": unit_bps}
            trainer = SimpleNamespace(
                sanity_checking=False, callback_metrics=metrics, is_global_zero=True, step=step
            )
            saver.on_validation_end(trainer, module=None)
        assert max(step for name, step in saved if name == "best") == best_at, select_by
        assert [step for name, step in saved if name == "last"] == [0, 1, 2, 3]
        assert saver.best == pytest.approx(best_loss)  # the kept checkpoint's loss


def test_few_training_trials_warn_only_when_every_session_is_small(tmp_path):
    from spikemask.errors import SpikemaskWarning
    from spikemask.training.run import FEW_TRIALS, _warn_if_few_trials

    small = make_session(session_id="a", trials=(FEW_TRIALS - 1, 2, 2))
    enough = make_session(session_id="b", trials=(FEW_TRIALS, 2, 2))
    with pytest.warns(SpikemaskWarning, match=rf"few training trials: a \({FEW_TRIALS - 1}\)"):
        _warn_if_few_trials([small])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_few_trials([enough])
        _warn_if_few_trials([small, enough])  # pre-training: the larger session carries it


def test_few_training_trials_warn_once_per_distributed_run(monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    from spikemask.errors import SpikemaskWarning
    from spikemask.training.run import FEW_TRIALS, _warn_if_few_trials

    small = make_session(session_id="a", trials=(FEW_TRIALS - 1, 2, 2))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_few_trials([small])  # rank 1 stays quiet
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with pytest.warns(SpikemaskWarning):
        _warn_if_few_trials([small])


def test_finetune_gets_its_own_budget_not_the_pretrainings(tmp_path):
    """Without a config, a fine-tuning keeps the run's settings but not its budget: a
    pre-training's 15,000 steps (or minutes) would be far too long for one new session."""
    from spikemask.config import RunConfig
    from spikemask.training.finetune import finetune_budget

    pretrained = tmp_path / "pre"
    long = ("train.max_steps=15000", "train.max_epochs=null", "train.max_minutes=30")
    short = ("train.max_steps=3", "train.max_epochs=null", "train.max_minutes=30")
    train([make_session()], pretrained, config=tiny_config(*short))

    new = make_session(session_id="new", num_units=9, seed=5)
    result = finetune(pretrained, [new], tmp_path / "ft", sets=["train.max_steps=2"])
    used = RunConfig.from_dict(yaml.safe_load((result.run_dir / "config.yaml").read_text()))
    assert (used.train.max_epochs, used.train.max_steps, used.train.max_minutes) == (300, 2, None)
    assert result.steps == 2
    recorded = RunConfig.from_dict(yaml.safe_load((pretrained / "config.yaml").read_text()))
    assert recorded.train.max_minutes == 30 and recorded.train.max_epochs is None
    assert used.train.lr == recorded.train.lr and used.model == recorded.model

    # the preset's from-scratch budget: 300 passes for small, 1000 for paper
    for preset, epochs in (("small", 300), ("paper", 1000)):
        base = load_config(preset=preset, sets=list(long))
        budget = finetune_budget(base).train
        assert (budget.max_epochs, budget.max_steps, budget.max_minutes) == (epochs, None, None)
    other = finetune_budget(load_config(sets=["model.width=64", *long]))
    assert other.train.max_epochs == 300
