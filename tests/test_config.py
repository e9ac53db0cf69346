"""Typed configs: presets, YAML files, --set overrides, unknown keys and bad types."""

from __future__ import annotations

import pytest

from spikemask.config import RunConfig, _coerce, load_config, parse_set_options, run_preset
from spikemask.errors import SpikemaskError


def test_presets():
    small, paper = run_preset("small"), run_preset("paper")
    assert (paper.model.width, paper.model.num_layers, paper.model.num_heads) == (512, 5, 8)
    assert paper.model.mlp_width == 1024 and paper.model.dropout == 0.4
    assert paper.train.lr == 1e-4 and paper.train.weight_decay == 0.01
    assert small.model.width < paper.model.width
    # the default weight decay (chosen on validation splits); the paper preset keeps 0.01
    assert small.train.weight_decay == 0.1
    with pytest.raises(SpikemaskError, match="unknown preset 'huge'"):
        run_preset("huge")


def test_yaml_then_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 64\n  num_heads: 2\ntrain:\n  lr: 0.002\n")
    config = load_config(preset="small", path=path, sets=["train.lr=3e-4", "data.batch_size=8"])
    assert config.model.width == 64 and config.model.num_heads == 2
    assert config.train.lr == pytest.approx(3e-4) and config.data.batch_size == 8


def test_round_trip_through_a_dict():
    config = load_config(sets=["masking.schemes=[temporal, neuron]", "model.architecture=ndt2"])
    again = RunConfig.from_dict(config.to_dict())
    assert again == config and again.masking.schemes == ("temporal", "neuron")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.widht=3"], "unknown key 'widht' in ModelConfig"),
        (["optim.lr=3"], "unknown key 'optim' in RunConfig"),
        (["train.lr=fast"], "lr: expected a number"),
        (["train.max_epochs=2.5"], "max_epochs: expected an integer or null, got 2.5"),
        (["train.fused_adamw=maybe"], "fused_adamw: expected true, false or null, got 'maybe'"),
        (["train.tensorboard=maybe"], "expected true or false"),
        (["data.region_level=lobe"], "region_level='lobe'"),
        (["masking.schemes=[telepathy]"], "unknown masking scheme"),
        (["train.max_epochs=null"], "no budget set"),
        (["noequals"], "expected section.key=value"),
    ],
)
def test_bad_overrides(sets, message):
    with pytest.raises(SpikemaskError, match=message):
        load_config(sets=sets)


@pytest.mark.parametrize(
    ("value", "hint", "message"),
    [
        ("x", int | None, "k: expected an integer or null, got 'x'"),
        ("q", int | float | None, "k: expected a number or null, got 'q'"),
        ("q", float | int, "k: expected a number, got 'q'"),
        (3, tuple[str, ...] | None, "k: expected a list or null, got 3"),
        ([1, "a"], tuple[int, ...] | None, "k: expected an integer, got 'a'"),
        ({"a": "b"}, dict[str, float], "k: expected a number, got 'b'"),
    ],
)
def test_type_errors_name_every_accepted_kind(value, hint, message):
    # a union names all its kinds; a bad item of a list is reported as the item, not the list
    with pytest.raises(SpikemaskError) as info:
        _coerce(value, hint, "k")
    assert str(info.value) == message


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(SpikemaskError, match="not valid YAML"):
        load_config(path=bad)
    bad.write_text("- a list")
    with pytest.raises(SpikemaskError, match="expected a mapping of sections"):
        load_config(path=bad)


def test_parse_set_options_nests():
    assert parse_set_options(["a.b=1", "a.c=x", "d=[1, 2]"]) == {
        "a": {"b": 1, "c": "x"},
        "d": [1, 2],
    }


def test_example_configs_in_the_repo_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(folder.glob("*.yaml"))
    assert files
    for path in files:
        load_config(path=path)  # raises on any unknown key or bad value
