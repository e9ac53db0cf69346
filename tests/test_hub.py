"""Models on the Hub, offline: push into a local repository in the Hub cache layout, load it
back through huggingface_hub's own (offline) snapshot resolution, with revision pins."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from spikemask.api import load_run
from spikemask.cli import main
from spikemask.config import load_config
from spikemask.errors import SpikemaskError
from spikemask.hub import parse_hub_id
from spikemask.training.run import train

from conftest import TINY_MODEL, make_session

hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub missing (extra 'hub')")
hub_constants = pytest.importorskip("huggingface_hub.constants")


class LocalHub:
    """Stands in for ``HfApi``: every upload becomes a commit in ``cache`` laid out exactly as
    huggingface_hub caches a downloaded repository (blobs, snapshots/<commit>, refs/<branch>),
    so ``snapshot_download`` with ``HF_HUB_OFFLINE=1`` resolves it as it would a real one."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.uploads: list[dict] = []

    def _repo(self, repo_id: str) -> Path:
        return self.cache / ("models--" + repo_id.replace("/", "--"))

    def _head(self, repo_id: str, branch: str) -> str | None:
        ref = self._repo(repo_id) / "refs" / branch
        return ref.read_text() if ref.is_file() else None

    def create_repo(self, repo_id, *, repo_type="model", exist_ok=False, private=False):
        assert repo_type == "model"
        if self._head(repo_id, "main") is None:
            self._commit(repo_id, "main", {".gitattributes": b"*.safetensors filter=lfs\n"})

    def create_branch(self, repo_id, *, branch, exist_ok=False):
        if self._head(repo_id, branch) is None:
            (self._repo(repo_id) / "refs" / branch).write_text(self._head(repo_id, "main"))

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=""):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.is_file()}
        self.uploads.append({"repo_id": repo_id, "revision": revision, "files": sorted(files)})
        commit = self._commit(repo_id, revision or "main", files)
        return SimpleNamespace(oid=commit, commit_url=f"local://{repo_id}/commit/{commit}")

    def _commit(self, repo_id: str, branch: str, files: dict[str, bytes]) -> str:
        repo = self._repo(repo_id)
        parent = self._head(repo_id, branch)
        tree = {}
        if parent:  # an upload adds to the branch's files, as on the Hub
            tree = {p.name: p.read_bytes() for p in (repo / "snapshots" / parent).iterdir()}
        tree.update(files)
        listing = "".join(f"{n}:{hashlib.sha256(b).hexdigest()}" for n, b in sorted(tree.items()))
        commit = hashlib.sha1(f"{parent}{listing}".encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (repo / "blobs").mkdir(exist_ok=True)
        for name, data in tree.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
        return commit


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """Offline Hub: a local repository store, HF_HUB_OFFLINE, and no network at all."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    fake = LocalHub(cache)
    monkeypatch.setattr("spikemask.hub._api", lambda token=None: fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("a hub test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return fake


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hubrun") / "run"
    config = load_config(
        preset="small",
        sets=[*TINY_MODEL, "data.batch_size=4", "train.max_steps=2", "train.progress_bar=false",
              "train.tensorboard=false"],
    )  # fmt: skip
    train([make_session()], folder, config=config)
    return folder


def test_push_then_load_gives_the_same_predictions(local_hub, run_dir, tmp_path):
    metrics = {"mean": {"co_smoothing": {"bps": 0.1234, "num_sessions": 1}}, "split": "test"}
    (tmp_path / "results.json").write_text(json.dumps(metrics))
    code = main(["push", str(run_dir), "hf://lab/tiny-mtm", "--metrics",
                 str(tmp_path / "results.json")])  # fmt: skip
    assert code == 0
    assert local_hub.uploads[0]["files"] == [
        "README.md",
        "config.json",
        "model.safetensors",
        "results.json",
        "run.json",
        "state.json",
        "vocab.json",
    ]  # fmt: skip; no trainer state, no pickle
    session = make_session()
    remote = load_run("hf://lab/tiny-mtm").predict(session, masking="neuron", seed=3)
    local = load_run(run_dir).predict(session, masking="neuron", seed=3)
    np.testing.assert_array_equal(remote, local)
    folder = Path(hub.snapshot_download("lab/tiny-mtm"))
    card = hub.ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "spikemask"
    assert "`tiny` | 11 | 3 |" in card.text  # training session, units, regions
    assert "| co_smoothing | bps | 0.1234 |" in card.text
    assert '"architecture": "ndt1"' in card.text
    # the default mixture with its resolved weights (the config records weights: null)
    assert "neuron (weight 2), causal (1), inter-region (1), intra-region (1)" in card.text
    record = json.loads((folder / "run.json").read_text())
    assert record["sessions"] == ["tiny"] and "/" not in "".join(record["sources"])


def test_revision_pins_a_branch_and_a_commit(local_hub, run_dir, tmp_path):
    from spikemask.hub import push_run

    first = push_run(run_dir, "hf://lab/pinned")
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    # the second push goes to branch v2 (created from main); main keeps the first commit
    second = push_run(other, "hf://lab/pinned", revision="v2", which="last")
    assert second["revision"] == "v2" and second["commit"] != first["commit"]
    main_folder = Path(hub.snapshot_download("lab/pinned"))
    v2_folder = Path(hub.snapshot_download("lab/pinned", revision="v2"))
    by_commit = Path(hub.snapshot_download("lab/pinned", revision=first["commit"]))
    assert main_folder.name == first["commit"] == by_commit.name
    assert v2_folder.name == second["commit"]
    assert load_run(f"hf://lab/pinned@{first['commit']}").session_ids == ["tiny"]
    assert load_run("hf://lab/pinned@v2").session_ids == ["tiny"]
    with pytest.raises(SpikemaskError, match="could not fetch model 'hf://lab/pinned@v9'"):
        load_run("hf://lab/pinned@v9")


def test_loading_checks_the_digest(local_hub, run_dir):
    from spikemask.hub import push_run

    commit = push_run(run_dir, "hf://lab/tampered")["commit"]
    snapshot = local_hub.cache / "models--lab--tampered" / "snapshots" / commit
    config = json.loads((snapshot / "config.json").read_text())
    config["model"]["dropout"] = 0.5
    target = (snapshot / "config.json").resolve()
    target.write_text(json.dumps(config))
    with pytest.raises(SpikemaskError, match="belong to a different config"):
        load_run("hf://lab/tampered")


def test_finetune_and_evaluate_accept_hub_ids(local_hub, run_dir, tmp_path):
    from spikemask.data.parquet import write_session
    from spikemask.hub import push_run

    push_run(run_dir, "hf://lab/base")
    new = write_session(make_session(session_id="new", seed=5), tmp_path / "new")
    code = main(["finetune", "hf://lab/base", str(new), "--out", str(tmp_path / "ft"),
                 "--max-steps", "1", "--quiet"])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["parent"] == "hf://lab/base"
    old = write_session(make_session(), tmp_path / "old")
    out = tmp_path / "results.json"
    code = main(["evaluate", "hf://lab/base", str(old), "--tasks", "co-smoothing", "--out",
                 str(out), "--quiet"])  # fmt: skip
    assert code == 0
    assert json.loads(out.read_text())["model"]["run"] == "hf://lab/base"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("hf://lab", "not a Hub model id"),
        ("hf://lab/name@", "not a Hub model id"),
        ("hf://a/b/c", "not a Hub model id"),
        ("lab/name", "not a Hub model id"),
    ],
)
def test_bad_hub_ids(value, message):
    with pytest.raises(SpikemaskError, match=message):
        parse_hub_id(value)


def test_hub_id_parsing():
    assert parse_hub_id("hf://lab/name") == ("lab/name", None)
    assert parse_hub_id("hf://lab/name@v1.2") == ("lab/name", "v1.2")


def test_cli_errors_are_one_line(local_hub, run_dir, capsys):
    assert main(["push", str(run_dir), "hf://lab/x@a", "--revision", "b"]) == 2
    assert "names revision 'a' but --revision is 'b'" in capsys.readouterr().err
    assert main(["evaluate", "hf://lab/none", "--out", "r.json"]) == 2
    assert "Hub model with no local datasets" in capsys.readouterr().err
