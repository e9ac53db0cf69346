"""Every malformed input a user can give, as one table: input -> message fragment -> exit code.

Each row builds its input in a fresh folder, runs the CLI in-process and asserts exactly one
``spikemask <command>: error: ...`` line on stderr containing the fragment, the exit code,
and no traceback anywhere. The rows cover every command, the file formats (parquet, NWB,
config YAML), the config keys and the checkpoint files (safetensors folder, JSON files,
Lightning resume state).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spikemask.cli import main
from spikemask.data.parquet import write_session
from spikemask.training.rundir import RunFolderLock

from conftest import TINY_MODEL, make_session

TINY = [
    *TINY_MODEL,
    "data.batch_size=4",
    "train.tensorboard=false",
    "train.progress_bar=false",
]


@dataclass(frozen=True)
class Ctx:
    """Shared, read-only inputs: a good dataset, a trained run; ``tmp``: this row's folder."""

    ds: Path
    run: Path
    tmp: Path

    def copy_run(self) -> Path:
        return Path(shutil.copytree(self.run, self.tmp / "run"))

    def copy_ds(self) -> Path:
        return Path(shutil.copytree(self.ds, self.tmp / "ds"))

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Ctx], list[str]]
    fragment: str
    code: int = 2


def _sets(*values: str) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def train(ctx: Ctx, *extra: str, data: str | Path | None = None) -> list[str]:
    data = str(data if data is not None else ctx.ds)
    out = str(ctx.tmp / "out")
    return ["train", data, "--out", out, "--max-steps", "1", "--quiet", *_sets(*TINY), *extra]


def evaluate(ctx: Ctx, *extra: str, run: Path | None = None) -> list[str]:
    run = run or ctx.run
    out = str(ctx.tmp / "results.json")
    return ["evaluate", str(run), str(ctx.ds), "--out", out, "--quiet", *extra]


def finetune(ctx: Ctx, run: Path, *extra: str, data: Path | None = None) -> list[str]:
    data = data or _session_folder(ctx, "new", num_units=9)
    out = str(ctx.tmp / "ft")
    return ["finetune", str(run), str(data), "--out", out, "--max-steps", "1", "--quiet", *extra]


def _session_folder(ctx: Ctx, name: str, **kwargs) -> Path:
    return write_session(make_session(session_id=name, **kwargs), ctx.tmp / name)


# ------------------------------------------------------------------ parquet corruption
def _parquet(ctx: Ctx, split: str = "train") -> tuple[Path, Path]:
    folder = ctx.copy_ds()
    return folder, folder / "data" / f"{split}-00000-of-00001.parquet"


def _set_column(ctx: Ctx, column: str, make, arrow_type=None) -> str:
    folder, path = _parquet(ctx)
    table = pq.read_table(path)
    rows = make(table.column(column).to_pylist())
    kind = arrow_type or table.schema.field(column).type
    index = table.column_names.index(column)
    pq.write_table(table.set_column(index, column, pa.array(rows, type=kind)), path)
    return str(folder)


def _drop_column(ctx: Ctx, column: str) -> str:
    folder, path = _parquet(ctx)
    pq.write_table(pq.read_table(path).drop_columns([column]), path)
    return str(folder)


def _no_rows(ctx: Ctx) -> str:
    folder, path = _parquet(ctx)
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    return str(folder)


def _garbage_parquet(ctx: Ctx) -> str:
    folder, path = _parquet(ctx, "test")
    path.write_text("garbage")
    return str(folder)


def _missing_split(ctx: Ctx) -> str:
    folder, path = _parquet(ctx, "val")
    path.unlink()
    return str(folder)


def _other_units_in_test(ctx: Ctx) -> str:
    folder, path = _parquet(ctx, "test")
    other = write_session(make_session(num_units=12), ctx.tmp / "other")
    path.write_bytes((other / "data" / "test-00000-of-00001.parquet").read_bytes())
    return str(folder)


def _zero_session(ctx: Ctx) -> str:
    folder = ctx.copy_ds()
    for path in (folder / "data").glob("*.parquet"):  # every count set to 0
        table = pq.read_table(path)
        column = "spikes_sparse_data"
        zeros = [[0] * len(row) for row in table.column(column).to_pylist()]
        kind = table.schema.field(column).type
        index = table.column_names.index(column)
        pq.write_table(table.set_column(index, column, pa.array(zeros, type=kind)), path)
    return str(folder)


# ------------------------------------------------------------------ checkpoint corruption
def _best(ctx: Ctx) -> tuple[Path, Path]:
    run = ctx.copy_run()
    return run, run / "checkpoints" / "best"


def _corrupt_best(ctx: Ctx, name: str, content: str | bytes | None) -> Path:
    run, best = _best(ctx)
    if content is None:
        (best / name).unlink()
    else:
        (best / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return run


def _edit_config_json(ctx: Ctx, edit) -> Path:
    run, best = _best(ctx)
    values = json.loads((best / "config.json").read_text())
    edit(values)
    (best / "config.json").write_text(json.dumps(values))
    return run


def _foreign_safetensors(ctx: Ctx) -> Path:
    import torch
    from safetensors.torch import save_file

    run, best = _best(ctx)
    save_file({"x": torch.zeros(1)}, str(best / "model.safetensors"))
    return run


def _nan_weights(ctx: Ctx) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    run, best = _best(ctx)
    path = best / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[first] = tensors[first].clone().fill_(float("nan"))
    save_file(tensors, str(path), metadata=metadata)  # as an older spikemask could write
    return run


def _resume_state(ctx: Ctx, content: bytes) -> list[str]:
    run = ctx.copy_run()  # a finished run has a resume state; damage it
    (run / "checkpoints" / "trainer" / "last.ckpt").write_bytes(content)
    return [*train(ctx)[:3], str(run), *train(ctx)[4:], "--resume"]


def _train_zero_split(ctx: Ctx) -> str:
    folder, path = _parquet(ctx, "train")
    table = pq.read_table(path)
    column = "spikes_sparse_data"
    zeros = [[0] * len(row) for row in table.column(column).to_pylist()]
    index = table.column_names.index(column)
    kind = table.schema.field(column).type
    pq.write_table(table.set_column(index, column, pa.array(zeros, type=kind)), path)
    return str(folder)


def _locked_out(ctx: Ctx) -> list[str]:
    out = ctx.tmp / "out"
    out.mkdir()
    lock = RunFolderLock(out)
    lock.acquire()
    ctx.tmp.joinpath("held").write_text("")  # kept alive by the lock object below
    _HELD.append(lock)
    return train(ctx)


_HELD: list[RunFolderLock] = []


def _list_file(ctx: Ctx, lines: str) -> str:
    return str(ctx.write("sessions.txt", lines))


def _config(ctx: Ctx, text: str) -> list[str]:
    return train(ctx, "--config", str(ctx.write("c.yaml", text)))


def _nwb_junk(ctx: Ctx) -> list[str]:
    junk = ctx.write("junk.nwb", b"not hdf5 at all")
    return ["prepare", "nwb", str(junk), "--out", str(ctx.tmp / "o")]


def _nwb(ctx: Ctx, *extra: str) -> list[str]:
    return ["prepare", "nwb", str(ctx.tmp / "x.nwb"), "--out", str(ctx.tmp / "o"), *extra]


def _evaluate_twice_trained(ctx: Ctx) -> list[str]:
    broken = _corrupt_best(ctx, "model.safetensors", b"not safetensors")
    return evaluate(ctx, "--compare", str(broken))


def _finetune_existing(ctx: Ctx) -> list[str]:
    return finetune(ctx, ctx.run, data=ctx.ds)


P = r"\.parquet"
CASES = [
    # ---- inspect: dataset folders and the parquet format
    Case("inspect missing folder", lambda c: ["inspect", str(c.tmp / "no")], "does not exist"),
    Case(
        "inspect a file",
        lambda c: ["inspect", str(c.write("f.txt", "x"))],
        "is not a folder",
    ),
    Case(
        "inspect folder without parquet",
        lambda c: ["inspect", str(c.write("d/readme", "x").parent)],
        "parquet",
    ),
    Case("parquet garbage", lambda c: ["inspect", _garbage_parquet(c)], "not a readable parquet"),
    Case(
        "parquet missing column",
        lambda c: ["inspect", _drop_column(c, "spikes_sparse_indptr")],
        r"missing column\(s\) \['spikes_sparse_indptr'\]",
    ),
    Case("parquet no rows", lambda c: ["inspect", _no_rows(c)], r"empty \(no trials\)"),
    Case(
        "parquet missing split",
        lambda c: ["inspect", _missing_split(c)],
        r"no parquet file for split\(s\) \['val'\]",
    ),
    Case(
        "parquet indptr length",
        lambda c: [
            "inspect",
            _set_column(c, "spikes_sparse_indptr", lambda r: [r[0][:-1], *r[1:]]),
        ],
        r"spikes_sparse_indptr.*expected T \+ 1",
    ),
    Case(
        "parquet unit index out of range",
        lambda c: [
            "inspect",
            _set_column(c, "spikes_sparse_indices", lambda r: [[99, *r[0][1:]], *r[1:]]),
        ],
        r"unit index 99",
    ),
    Case(
        "parquet negative count",
        lambda c: [
            "inspect",
            _set_column(c, "spikes_sparse_data", lambda r: [[-1, *r[0][1:]], *r[1:]]),
        ],
        "negative count -1",
    ),
    Case(
        "parquet NaN count",
        lambda c: [
            "inspect",
            _set_column(
                c,
                "spikes_sparse_data",
                lambda r: [[float("nan"), *r[0][1:]], *r[1:]],
                pa.list_(pa.float64()),
            ),
        ],
        "NaN",
    ),
    Case(
        "parquet fractional count",
        lambda c: [
            "inspect",
            _set_column(
                c,
                "spikes_sparse_data",
                lambda r: [[0.5, *r[0][1:]], *r[1:]],
                pa.list_(pa.float64()),
            ),
        ],
        "non-integer",
    ),
    Case(
        "parquet region list length",
        lambda c: ["inspect", _set_column(c, "cluster_regions", lambda r: [x[:-1] for x in r])],
        r"cluster_regions.*expected one per unit",
    ),
    Case(
        "parquet unit ids differ between rows",
        lambda c: [
            "inspect",
            _set_column(c, "cluster_uuids", lambda r: [r[0], ["x"] * 11, *r[2:]]),
        ],
        r"cluster_uuids.*differs between row 0 and row 1",
    ),
    Case(
        "parquet splits with other units",
        lambda c: ["inspect", _other_units_in_test(c)],
        r"differs from .*train",
    ),
    Case("all-zero session", lambda c: ["inspect", _zero_session(c)], "every spike count is 0"),
    Case(
        "hub dataset keeps its hf:// name",
        lambda c: ["inspect", "hf://no-such-org-spikemask/no-such-dataset"],
        r"'hf://no-such-org-spikemask/no-such-dataset'",
    ),
    Case("inspect without folder", lambda c: ["inspect"], "the following arguments are required"),
    # ---- synth
    Case(
        "synth zero sessions",
        lambda c: ["synth", "--out", str(c.tmp / "s"), "--sessions", "0"],
        "num_sessions=0",
    ),
    Case(
        "synth into a non-empty folder",
        lambda c: ["synth", "--out", str(c.write("s/x", "x").parent)],
        "not an empty folder",
    ),
    Case(
        "synth sessions not a number",
        lambda c: ["synth", "--out", "x", "--sessions", "a"],
        "invalid int value",
    ),
    Case(
        "synth negative seed",
        lambda c: ["synth", "--out", str(c.tmp / "s"), "--seed", "-1"],
        "seed=-1",
    ),
    # ---- train: data
    Case("train missing folder", lambda c: train(c, data=c.tmp / "no"), "does not exist"),
    Case(
        "train empty list file",
        lambda c: train(c, data=_list_file(c, "# none\n")),
        "no dataset given",
    ),
    Case(
        "train a session twice",
        lambda c: ["train", str(c.ds), str(c.ds), "--out", str(c.tmp / "o")],
        "appears twice",
    ),
    Case(
        "train all-zero session",
        lambda c: train(c, data=_zero_session(c)),
        "every spike count is 0",
    ),
    Case(
        "train split without spikes",
        lambda c: train(c, data=_train_zero_split(c)),
        r"split 'train': every spike count is 0",
    ),
    Case(
        "train one time bin",
        lambda c: train(c, data=_session_folder(c, "one", num_bins=1)),
        "at least 2 time bins",
    ),
    Case(
        "train region masking without regions",
        lambda c: train(c, data=_session_folder(c, "root", regions=("root",))),
        "labelled region",
    ),
    # ---- train: config keys
    Case(
        "config unknown model key",
        lambda c: train(c, *_sets("model.widht=3")),
        "unknown key 'widht'",
    ),
    Case("config unknown section", lambda c: train(c, *_sets("optim.lr=3")), "unknown key 'optim'"),
    Case(
        "config lr not a number",
        lambda c: train(c, *_sets("train.lr=fast")),
        "lr: expected a number",
    ),
    Case(
        "config lr zero",
        lambda c: train(c, *_sets("train.lr=0")),
        r"train\.lr=0\.0; expected a positive",
    ),
    Case(
        "config set without =",
        lambda c: train(c, "--set", "train.lr"),
        "expected section.key=value",
    ),
    Case("config batch size zero", lambda c: train(c, *_sets("data.batch_size=0")), "batch_size=0"),
    Case(
        "config region level",
        lambda c: train(c, *_sets("data.region_level=atlas")),
        "region_level='atlas'",
    ),
    Case(
        "config session sampling",
        lambda c: train(c, *_sets("data.session_sampling=x")),
        "session_sampling='x'",
    ),
    Case(
        "config workers negative",
        lambda c: train(c, *_sets("data.num_workers=-1")),
        "num_workers=-1",
    ),
    Case("config precision", lambda c: train(c, *_sets("train.precision=8")), "precision='8'"),
    Case(
        "config warmup",
        lambda c: train(c, *_sets("train.warmup_fraction=1.5")),
        "warmup_fraction=1.5",
    ),
    Case(
        "config bool",
        lambda c: train(c, *_sets("train.tensorboard=maybe")),
        "expected true or false",
    ),
    Case(
        "config checkpoint steps",
        lambda c: train(c, *_sets("train.checkpoint_every_n_steps=0")),
        "checkpoint_every_n_steps=0",
    ),
    Case(
        "config checkpoint minutes",
        lambda c: train(c, *_sets("train.checkpoint_every_minutes=-1")),
        "checkpoint_every_minutes=-1",
    ),
    Case(
        "config width not an integer",
        lambda c: train(c, *_sets("model.width=wide")),
        "width: expected an integer",
    ),
    Case(
        "budget max epochs 0",
        lambda c: train(c, "--max-epochs", "0"),
        "max_epochs=0; expected a positive",
    ),
    Case("budget max steps negative", lambda c: train(c, "--max-steps", "-5"), "max_steps=-5"),
    Case("budget max minutes 0", lambda c: train(c, "--max-minutes", "0"), "max_minutes=0"),
    Case(
        "no budget at all",
        lambda c: train(c, *_sets("train.max_epochs=null", "train.max_steps=null")),
        "no budget set",
    ),
    # ---- train: config YAML files
    Case(
        "yaml missing",
        lambda c: train(c, "--config", str(c.tmp / "no.yaml")),
        "config file .* does not exist",
    ),
    Case("yaml invalid", lambda c: _config(c, "model: [unclosed"), "is not valid YAML"),
    Case("yaml a list", lambda c: _config(c, "- 1\n- 2\n"), "expected a mapping of sections"),
    Case("yaml section a number", lambda c: _config(c, "model: 3\n"), "expected a mapping"),
    Case("yaml unknown key", lambda c: _config(c, "train:\n  lrate: 1\n"), "unknown key 'lrate'"),
    # ---- train: flags and the run folder
    Case("train bad masking", lambda c: train(c, "--masking", "bogus"), "invalid choice: 'bogus'"),
    Case("train bad preset", lambda c: train(c, "--preset", "huge"), "invalid choice: 'huge'"),
    Case(
        "train out is a file",
        lambda c: [*train(c)[:3], str(c.write("out", "x")), *train(c)[4:]],
        "is a file",
    ),
    Case("train out not empty", lambda c: (c.write("out/x", "x"), train(c))[1], "is not empty"),
    Case("train out locked", _locked_out, "is in use by process"),
    Case("resume without state", lambda c: train(c, "--resume"), "holds no interrupted run"),
    Case(
        "resume with other options",
        lambda c: [*train(c)[:3], str(c.copy_run()), *train(c)[4:], "--resume"],
        "configuration differs",
    ),
    Case(
        "resume state garbage",
        lambda c: _resume_state(c, b"garbage"),
        "resume state .* is corrupted",
    ),
    Case(
        "resume state truncated",
        lambda c: _resume_state(c, b"PK\x03\x04"),
        "resume state .* is corrupted",
    ),
    # ---- finetune and the checkpoint files
    Case(
        "finetune missing run",
        lambda c: finetune(c, c.tmp / "norun"),
        r"run folder .* does not exist",
    ),
    Case("finetune session already in model", _finetune_existing, "already in the model"),
    Case(
        "finetune bad mode",
        lambda c: finetune(c, c.run, "--mode", "half"),
        "invalid choice: 'half'",
    ),
    Case(
        "checkpoint vocab.json not an object",
        lambda c: finetune(c, _corrupt_best(c, "vocab.json", "[1, 2, 3]")),
        r"vocab\.json' is corrupted \(expected a JSON object",
    ),
    Case(
        "checkpoint vocab.json entries malformed",
        lambda c: finetune(c, _corrupt_best(c, "vocab.json", '{"sessions": [{"x": 1}]}')),
        r"vocab\.json' is corrupted \(each entry of 'sessions'",
    ),
    Case(
        "checkpoint vocab.json missing",
        lambda c: finetune(c, _corrupt_best(c, "vocab.json", None)),
        r"vocab\.json' is missing",
    ),
    Case(
        "checkpoint config.json not JSON",
        lambda c: finetune(c, _corrupt_best(c, "config.json", "{")),
        r"config\.json' is corrupted",
    ),
    Case(
        "checkpoint config.json unknown key",
        lambda c: finetune(c, _edit_config_json(c, lambda v: v["model"].update(colour=1))),
        "unknown key 'colour'",
    ),
    Case(
        "checkpoint config.json other width",
        lambda c: finetune(c, _edit_config_json(c, lambda v: v["model"].update(width=64))),
        "different config or vocabulary",
    ),
    Case(
        "checkpoint weights garbage",
        lambda c: finetune(c, _corrupt_best(c, "model.safetensors", b"garbage")),
        r"model\.safetensors' is corrupted",
    ),
    Case(
        "checkpoint weights missing",
        lambda c: finetune(c, _corrupt_best(c, "model.safetensors", None)),
        r"model\.safetensors' is missing",
    ),
    Case(
        "checkpoint foreign safetensors",
        lambda c: finetune(c, _foreign_safetensors(c)),
        "not a spikemask checkpoint",
    ),
    Case(
        "checkpoint with NaN weights",
        lambda c: evaluate(c, run=_nan_weights(c)),
        r"checkpoint .*best': weight .* holds non-finite values",
    ),
    # ---- evaluate
    Case("evaluate missing run", lambda c: evaluate(c, run=c.tmp / "norun"), "does not exist"),
    Case(
        "evaluate out is a folder",
        lambda c: [*evaluate(c)[:4], str(c.tmp), *evaluate(c)[5:]],
        "is a folder; expected the path of the results JSON",
    ),
    Case(
        "evaluate report is a file",
        lambda c: evaluate(c, "--report", str(c.write("report.md", "x"))),
        "is an existing file; expected a folder",
    ),
    Case(
        "evaluate compare broken run", _evaluate_twice_trained, r"model\.safetensors' is corrupted"
    ),
    Case(
        "evaluate compare missing run",
        lambda c: evaluate(c, "--compare", str(c.tmp / "nope")),
        "does not exist",
    ),
    Case(
        "evaluate batch size 0",
        lambda c: evaluate(c, "--batch-size", "0"),
        "expected a positive integer",
    ),
    Case(
        "evaluate unknown task",
        lambda c: evaluate(c, "--tasks", "dance"),
        r"unknown task\(s\) \['dance'\]",
    ),
    Case("evaluate bad split", lambda c: evaluate(c, "--split", "all"), "invalid choice: 'all'"),
    Case(
        "evaluate run.json not an object",
        lambda c: (
            c.copy_run().joinpath("run.json").write_text("[1]"),
            ["evaluate", str(c.tmp / "run"), "--out", str(c.tmp / "r.json")],
        )[1],
        r"run\.json': expected a JSON object",
    ),
    Case(
        "evaluate unknown session",
        lambda c: [*evaluate(c)[:2], str(_session_folder(c, "other")), *evaluate(c)[3:]],
        "'other' is not in this model",
    ),
    # ---- prepare (NWB) and demo
    Case("nwb missing file", lambda c: _nwb(c), r"NWB file .* not found"),
    Case("nwb not hdf5", _nwb_junk, "not a readable NWB file"),
    Case(
        "nwb bin size 0",
        lambda c: _nwb(c, "--bin-size", "0"),
        "expected a bin width in seconds > 0",
    ),
    Case("nwb window reversed", lambda c: _nwb(c, "--window", "0.5", "-0.5"), "start >= end"),
    Case(
        "ibl eid list missing",
        lambda c: ["prepare", "ibl", "--eids", str(c.tmp / "e.txt"), "--out", str(c.tmp / "o")],
        r"eid list .* does not exist",
    ),
    Case(
        "demo zero minutes",
        lambda c: ["demo", "--out", str(c.tmp / "d"), "--minutes", "0"],
        "expected a positive number of minutes",
    ),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad-inputs")
    ds = write_session(make_session(), root / "ds")
    run = root / "run"
    assert (
        main(["train", str(ds), "--out", str(run), "--max-steps", "2", "--quiet", *_sets(*TINY)])
        == 0
    )
    return ds, run


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_error_line(case: Case, shared, tmp_path, capsys):
    ds, run = shared
    argv = case.argv(Ctx(ds, run, tmp_path))
    try:
        code, out, err = run_cli(argv, capsys)
    finally:
        while _HELD:
            _HELD.pop().release()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith(f"spikemask {argv[0]}")]
    lines = [line for line in lines if re.match(r"spikemask [a-z ]+: error: ", line)]
    assert len(lines) == 1, err
    assert re.search(case.fragment, lines[0]), lines[0]
    assert code == case.code


def test_evaluate_checks_every_input_before_any_work(shared, tmp_path, capsys):
    ds, run = shared
    ctx = Ctx(ds, run, tmp_path)
    argv = _evaluate_twice_trained(ctx)
    code, _, _ = run_cli(argv, capsys)
    assert code == 2 and not (tmp_path / "results.json").exists()
    # the report folder problem is found before evaluating too
    report = ctx.write("rep", "x")
    code, _, err = run_cli(evaluate(ctx, "--report", str(report)), capsys)
    assert code == 2 and not (tmp_path / "results.json").exists()
    assert "is an existing file" in err
