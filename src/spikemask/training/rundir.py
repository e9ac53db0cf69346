"""The run folder: one writer at a time, created or resumed, removed again if a run fails
before its first step.

Only one process may write a run folder. :class:`RunFolderLock` holds an exclusive
``fcntl.flock`` on ``<run>/.lock`` (which also records the owner's pid and host) for the
whole run. The kernel drops the lock when the owner exits in any way, kill -9 included, so a
lock file left by a dead process is stale: the next run takes it over and says so. A second
process that finds the lock held is refused with a message naming the owner.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spikemask.atomic import write_text_atomic
from spikemask.config import RunConfig
from spikemask.errors import SpikemaskError

__all__ = ["LOCK_NAME", "RESUME_DIR", "RunFolder", "RunFolderLock"]

LOCK_NAME = ".lock"
RESUME_DIR = Path("checkpoints") / "trainer"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the O_EXCL file alone is used
    fcntl = None  # type: ignore[assignment]


class RunFolderLock:
    """An exclusive lock on a run folder, held until :meth:`release` or process exit."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def _owner(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "another process"
        pid, _, host = text.partition(" ")
        return f"process {pid} on {host}" if pid else "another process"

    def acquire(self) -> None:
        """Take the lock, or raise :class:`SpikemaskError` naming the process that holds it."""
        for _ in range(5):  # retried only when the lock file was replaced under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._try_lock(fd):
                os.close(fd)
                raise SpikemaskError(
                    f"run folder {str(self.path.parent)!r} is in use by {self._owner()} (lock "
                    f"file {str(self.path)!r}); wait for that run to end or choose another --out"
                )
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file between our open and lock
                os.close(fd)
                continue
            self._claim(fd)
            return
        raise SpikemaskError(f"could not lock run folder {str(self.path.parent)!r}; try again")

    @staticmethod
    def _try_lock(fd: int) -> bool:
        if fcntl is None:  # pragma: no cover
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _claim(self, fd: int) -> None:
        previous = os.read(fd, 200).decode(errors="replace").strip()
        if previous:
            pid, _, host = previous.partition(" ")
            print(
                f"spikemask: taking over the stale lock of process {pid} on {host} (no longer "
                f"running) in {str(self.path.parent)!r}",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _check_resume_state(path: Path) -> None:
    """The resume state must be a readable checkpoint of tensors and plain values."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many kinds for a damaged or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpikemaskError(
            f"--resume: the resume state {str(path)!r} is corrupted or not a Lightning "
            f"checkpoint ({first[:200]}); start a new --out folder (checkpoints/best and "
            "checkpoints/last there are unaffected)"
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state or "loops" not in state:
        raise SpikemaskError(
            f"--resume: {str(path)!r} is not a Lightning trainer checkpoint (expected the keys "
            "'state_dict' and 'loops')"
        )


def _is_empty(folder: Path) -> bool:
    return not any(p.name != LOCK_NAME for p in folder.iterdir())


@dataclass
class RunFolder:
    """A locked run folder; :meth:`discard` removes what this run created."""

    path: Path
    lock: RunFolderLock | None
    created_dir: bool = False
    written: list[Path] = field(default_factory=list)

    @classmethod
    def open(
        cls, out: Path, config: RunConfig, record: dict[str, Any], *, resume: bool, rank: int = 0
    ) -> RunFolder:
        """Lock ``out`` and check it (``resume``) or fill it with a new run's files."""
        out = Path(out).expanduser()
        if rank != 0:  # other DDP ranks: rank 0 checks, locks and writes the folder
            return cls(out, None)
        if resume:
            return cls._open_resumed(out, config)
        if out.exists() and not out.is_dir():
            raise SpikemaskError(f"--out {str(out)!r} is a file; expected a new folder")
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        folder = cls(out, RunFolderLock(out), created_dir=created)
        folder.lock.acquire()
        try:
            if not _is_empty(out):
                raise SpikemaskError(
                    f"output folder {str(out)!r} is not empty; choose a new --out or pass "
                    "--resume to continue an interrupted run there"
                )
            folder._write(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
            folder._write(out / "run.json", json.dumps(record, indent=1))
        except BaseException:
            if created:
                folder.discard()
            else:
                folder.release()
            raise
        return folder

    @classmethod
    def _open_resumed(cls, out: Path, config: RunConfig) -> RunFolder:
        if not (out / RESUME_DIR / "last.ckpt").is_file():
            raise SpikemaskError(f"--resume: {str(out)!r} holds no interrupted run to resume")
        folder = cls(out, RunFolderLock(out))
        folder.lock.acquire()
        try:
            _check_resume_state(out / RESUME_DIR / "last.ckpt")
        except SpikemaskError:
            folder.release()
            raise
        saved = out / "config.yaml"
        try:
            values = yaml.safe_load(saved.read_text()) if saved.is_file() else None
        except yaml.YAMLError:
            values = None
        if values != config.to_dict():
            folder.release()
            raise SpikemaskError(
                f"--resume: the configuration differs from the one saved in {str(saved)!r}; "
                "resume with the same options or start a new --out folder"
            )
        return folder

    def _write(self, path: Path, text: str) -> None:
        self.written.append(path)
        write_text_atomic(path, text)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def discard(self) -> None:
        """Remove everything this run put in the folder (the folder too if it made it)."""
        if self.lock is None:
            return
        if self.created_dir:
            shutil.rmtree(self.path, ignore_errors=True)
        else:  # the folder was empty before this run: empty it again
            for child in self.path.iterdir():
                if child.name == LOCK_NAME:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        self.release()
