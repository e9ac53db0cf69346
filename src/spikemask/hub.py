"""Trained models on the Hugging Face Hub: ``push`` a run, load ``hf://ORG/NAME[@revision]``.

A pushed repository holds one checkpoint at its root, in the same safetensors-only layout as
a run's ``checkpoints/best`` folder, plus a model card and the run record::

    model.safetensors  config.json  vocab.json  state.json   the checkpoint
    README.md                                                the model card
    run.json                                                 kind, session ids (no local paths)
    results.json                                             evaluation results, when given

Loading downloads only ``*.safetensors``, ``*.json`` and ``README.md`` (never a pickle) and
goes through :func:`~spikemask.training.checkpoint.load_checkpoint`, which checks that the
weights carry the digest of the config and vocabularies beside them. ``huggingface_hub``
(the ``hub`` extra) does the transfer and caching; ``HF_HUB_OFFLINE=1`` loads from its cache.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spikemask.errors import SpikemaskError
from spikemask.training.checkpoint import CONFIG, STATE, VOCAB, WEIGHTS, Checkpoint

__all__ = ["HUB_PREFIX", "download_run", "is_hub_id", "model_card", "parse_hub_id", "push_run"]

HUB_PREFIX = "hf://"
_PATTERNS = ["*.safetensors", "*.json", "README.md"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_id(value: str | Path) -> bool:
    """True for ``hf://...`` model ids (a ``Path`` never is one: it collapses ``//``)."""
    return isinstance(value, str) and value.startswith(HUB_PREFIX)


def parse_hub_id(value: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME[@revision]`` -> (``ORG/NAME``, revision or None).

    Raises:
        SpikemaskError: Not of that form.
    """
    body = value[len(HUB_PREFIX) :] if value.startswith(HUB_PREFIX) else ""
    repo_id, _, revision = body.partition("@")
    if not _NAME.match(repo_id) or (revision == "" and "@" in body):
        raise SpikemaskError(
            f"{value!r} is not a Hub model id; expected hf://ORG/NAME or hf://ORG/NAME@REVISION"
        )
    return repo_id, revision or None


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise SpikemaskError(
            "huggingface_hub is not installed; install it with pip install 'spikemask[hub]'"
        ) from None
    return huggingface_hub


def _api(token: str | None = None) -> Any:
    """The Hub client (a seam the tests replace with a local, offline one)."""
    return _hub().HfApi(token=token)


def download_run(value: str, *, token: str | None = None) -> Path:
    """Download (or find in the cache) the checkpoint files of ``hf://ORG/NAME[@rev]``.

    Returns:
        The local snapshot folder, loadable with ``load_checkpoint``.

    Raises:
        SpikemaskError: A malformed id, or a repository / revision that cannot be fetched.
    """
    repo_id, revision = parse_hub_id(value)
    hub = _hub()
    try:
        folder = hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=_PATTERNS, token=token
        )
    except Exception as err:  # network, auth, missing repo / revision, offline cache miss
        kind = type(err).__name__
        raise SpikemaskError(
            f"could not fetch model {value!r} from the Hub ({kind}: {err})"
        ) from None
    if not (Path(folder) / WEIGHTS).is_file():
        raise SpikemaskError(f"{value!r} holds no {WEIGHTS}; is it a spikemask model repository?")
    return Path(folder)


def push_run(
    run: str | Path,
    target: str,
    *,
    revision: str | None = None,
    which: str = "best",
    metrics: Mapping[str, Any] | None = None,
    license: str = "mit",
    private: bool = False,
    token: str | None = None,
    message: str | None = None,
) -> dict[str, str]:
    """Upload the ``best`` (or ``last``) checkpoint of a run with a model card.

    The checkpoint is loaded (and so verified) before anything is uploaded.

    Args:
        run: Run folder (or a checkpoint folder).
        target: ``hf://ORG/NAME`` (``@revision`` allowed instead of ``revision``).
        revision: Branch to push to (created from ``main`` when missing); default ``main``.
        which: ``best`` or ``last`` checkpoint of the run.
        metrics: An evaluation result (the JSON of ``spikemask evaluate``) for the card.
        license: Licence identifier for the card (Hub licence ids, e.g. ``mit``).
        private: Create the repository as private.
        token: Hub token (default: the logged-in user's).
        message: Commit message.

    Returns:
        ``{"repo_id", "revision", "commit", "url"}``.
    """
    from spikemask.training.checkpoint import load_run_checkpoint

    repo_id, pinned = parse_hub_id(target)
    if pinned and revision and pinned != revision:
        raise SpikemaskError(f"{target!r} names revision {pinned!r} but --revision is {revision!r}")
    revision = revision or pinned
    checkpoint = load_run_checkpoint(run, which)
    folder = _checkpoint_folder(Path(run).expanduser(), which)
    api = _api(token)
    with tempfile.TemporaryDirectory(prefix="spikemask-push-") as tmp:
        stage = Path(tmp)
        for name in (WEIGHTS, CONFIG, VOCAB, STATE):
            if (folder / name).is_file():
                shutil.copy2(folder / name, stage / name)
        record = _run_record(Path(run).expanduser(), checkpoint)
        (stage / "run.json").write_text(json.dumps(record, indent=1))
        if metrics:
            (stage / "results.json").write_text(json.dumps(metrics, indent=1))
        card = model_card(checkpoint, repo_id=repo_id, metrics=metrics, license=license)
        (stage / "README.md").write_text(card)
        commit = _upload(api, repo_id, stage, revision, private, message or f"spikemask {run}")
    return {
        "repo_id": repo_id,
        "revision": revision or "main",
        "commit": str(getattr(commit, "oid", "") or ""),
        "url": str(getattr(commit, "commit_url", "") or commit),
    }


def _upload(api: Any, repo_id: str, stage: Path, revision: str | None, private: bool, message):
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(stage), revision=revision, commit_message=message
        )
    except Exception as err:  # network, auth, permissions
        kind = type(err).__name__
        raise SpikemaskError(f"could not push to {repo_id!r} ({kind}: {err})") from None


def _checkpoint_folder(run: Path, which: str) -> Path:
    return run if (run / WEIGHTS).is_file() else run / "checkpoints" / which


def _run_record(run: Path, checkpoint: Checkpoint) -> dict[str, Any]:
    """The run's ``run.json`` without local paths (kind, mode, session ids)."""
    record: dict[str, Any] = {}
    if (run / "run.json").is_file():
        try:
            record = json.loads((run / "run.json").read_text())
        except json.JSONDecodeError:
            record = {}
    kept = {k: v for k, v in record.items() if k in ("kind", "mode", "sessions")}
    kept["sources"] = [Path(str(s)).name for s in record.get("sources", []) if s]
    kept.setdefault("sessions", list(checkpoint.sessions))
    return kept


def model_card(
    checkpoint: Checkpoint,
    *,
    repo_id: str,
    metrics: Mapping[str, Any] | None = None,
    license: str = "mit",
) -> str:
    """The README.md of a pushed model: config, training sessions, metrics, licence, usage."""
    hub = _hub()
    data = hub.ModelCardData(
        license=license,
        library_name="spikemask",
        tags=["neuroscience", "spiking-data", "masked-modelling", "spikemask"],
    )
    config = checkpoint.config.to_dict()
    model = config.get("model", {})
    sessions = "\n".join(
        f"| `{s.session_id}` | {s.num_units} | {len(set(s.unit_regions))} |"
        for s in checkpoint.sessions.values()
    )
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A spikemask {model.get('architecture', '?')} model (width {model.get('width')}, "
        f"{model.get('num_layers')} layers) trained with masking schemes "
        f"{_mixture(checkpoint.config.masking)}: multi-task masking (MtM) of Zhang et al., "
        "NeurIPS 2024 ([arXiv:2407.14668](https://arxiv.org/abs/2407.14668)).",
        "",
        "```python",
        "import spikemask",
        f'model = spikemask.load_run("hf://{repo_id}")  # add @revision to pin one',
        "```",
        "",
        "## Training sessions",
        "",
        "| session | units | regions |",
        "|---|---|---|",
        sessions,
        "",
        "## Metrics",
        "",
        *_metric_lines(checkpoint.state, metrics),
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config, indent=1),
        "```",
        "",
        "## Licence",
        "",
        f"Weights: `{license}`. The training data keep their own licences and citations "
        "(e.g. Steinmetz et al. 2019, CC BY 4.0, doi:10.6084/m9.figshare.9598406).",
    ]
    return hub.ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n").content


def _mixture(masking: Any) -> str:
    """``neuron (weight 2), causal (1), ...``, or the one scheme's name."""
    schemes, weights = masking.schemes, masking.resolved_weights
    if len(schemes) == 1:
        return schemes[0]
    parts = [f"{s} ({w:g})" for s, w in zip(schemes, weights, strict=True)]
    parts[0] = f"{schemes[0]} (weight {weights[0]:g})"
    return ", ".join(parts)


def _metric_lines(state: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> list[str]:
    lines = [f"- {k}: {v:.5f}" for k, v in state.items() if isinstance(v, float)]
    lines += [f"- {k}: {v}" for k, v in state.items() if isinstance(v, int)]
    mean = (metrics or {}).get("mean") or {}
    rows = [
        f"| {task} | {name} | {value:.4f} |"
        for task, values in mean.items()
        if isinstance(values, Mapping)
        for name, value in values.items()
        if isinstance(value, float)
    ]
    if rows:
        split = (metrics or {}).get("split", "test")
        lines += ["", f"Evaluation ({split} split, mean over sessions):", "",
                  "| task | metric | value |", "|---|---|---|", *rows]  # fmt: skip
    return lines or ["No metrics were recorded."]
