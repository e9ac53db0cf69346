"""The tutorials in docs/ run as written (on a tiny budget), so they cannot rot."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from conftest import SHARED_DATA, TINY_MODEL

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
NWB = SHARED_DATA / "nwb" / "A2929-200711.nwb"


def python_blocks(path: Path) -> str:
    """The ```python blocks of a markdown file, joined into one script."""
    return "\n".join(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL))


def test_pynapple_tutorial_runs(tmp_path, monkeypatch):
    pytest.importorskip("pynapple", reason="pynapple is not installed (extra 'pynapple')")
    if not NWB.is_file():
        pytest.skip(f"real NWB file {NWB} is absent (needs ../shared/data beside the repo)")
    script = python_blocks(DOCS / "spike-times-to-evaluation.md")
    budget = '"train.max_minutes=5"'
    assert budget in script and '"A2929-200711.nwb"' in script
    tiny_sets = [*TINY_MODEL, "train.max_steps=2", "train.progress_bar=false"]
    tiny = ", ".join(repr(s) for s in tiny_sets)
    script = script.replace(budget, tiny)
    script = script.replace('"A2929-200711.nwb"', repr(str(NWB)))
    script = script.replace("spikemask.evaluate(model, [session], tasks=", "spikemask.evaluate("
                            "model, [session], progress=False, tasks=")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(script, "spike-times-to-evaluation.md", "exec"), scope)
    assert type(scope["rates"]).__name__ == "TsdFrame"
    assert scope["peri"].shape == (100, scope["session"].split("test").num_trials, 15)
    result = scope["results"]["sessions"]["A2929-200711"]["co_smoothing"]
    assert set(result) >= {"bps", "bps_pooled"}
    assert (tmp_path / "runs" / "a2929" / "checkpoints" / "best" / "model.safetensors").is_file()


def test_shipped_session_tutorial_runs(tmp_path, monkeypatch):
    script = python_blocks(DOCS / "shipped-session.md")
    budget = 'BUDGET = ["train.max_minutes=2"]'
    assert budget in script
    tiny = [*TINY_MODEL, "train.max_epochs=null", "train.max_minutes=null", "train.max_steps=2",
            "train.progress_bar=false", "data.batch_size=16"]  # fmt: skip
    script = script.replace(budget, f"BUDGET = {tiny!r}")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(script, "shipped-session.md", "exec"), scope)
    assert scope["seen"].num_units == scope["unseen"].num_units == 100
    assert (tmp_path / "report" / "report.md").is_file()
    assert any((tmp_path / "report" / "figures").glob("*.png"))
    assert "bps" in scope["scores"]["mean"]["co_smoothing"]
    assert scope["finetuned"].steps == 2


def test_new_animal_tutorial_runs(tmp_path, monkeypatch):
    """Pre-train on five synthetic animals, fine-tune to the sixth: the benchmark, then by hand."""
    script = python_blocks(DOCS / "new-animal.md")
    replacements = {
        # smaller animals and budgets; the calls are as written
        'synthesize("synth6", num_sessions=6, seed=0)': (
            'synthesize("synth6", num_sessions=6, seed=0, config=__import__('
            '"spikemask.data.synthetic", fromlist=["SyntheticConfig"]).SyntheticConfig('
            "num_regions=3, latent_dim=2, units_per_region=(6, 8), num_trials=(40, 44), "
            "num_bins=30, window_start_s=-0.2))"
        ),
        "BUDGET = {}": f"BUDGET = {{'steps': 2, 'pretrain_steps': (2, 3), 'sets': {TINY_MODEL!r}}}",
        'PRETRAIN = ["train.max_steps=15000",': (
            f'PRETRAIN = [*{TINY_MODEL!r}, "train.max_steps=3",'
        ),
        "FINETUNE = []": 'FINETUNE = ["train.max_steps=2", "train.max_epochs=null"]',
    }
    for old, new in replacements.items():
        assert old in script, old
        script = script.replace(old, new)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(script, "new-animal.md", "exec"), scope)
    models = scope["summary"]["models"]
    assert {"MtM scratch", "temporal scratch", "MtM pre-trained", "linear", "oracle"} <= set(models)
    assert "MtM pre-trained 2 steps" in models and "MtM pre-trained 3 steps" in models
    for name in ("bench/table.md", "bench/results.json", "bench/quality.png"):
        assert (tmp_path / name).is_file(), name
    assert scope["pretrained"].steps == 3 and scope["finetuned"].steps == 2
    assert set(scope["scores"]["sessions"]) == {scope["new"].session_id}
    assert "bps" in scope["linear"]["mean"]["intra_region"]
