"""Resumable stages: each runs once, logs to its own file and leaves a marker only when it succeeded.

A stage whose marker is missing runs again from its start (its own outputs are overwritten, or resumed where the
tool supports it, e.g. ``nnUNetv2_train --c``), so an interrupted demo is finished by running it again.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from nnunet_blob.io import atomic_write_json


class StageError(RuntimeError):
    """A stage failed; the message names the stage, its log file and what to run next."""


class Stages:
    """Runs named stages in ``root``, logs in ``root/logs``, markers in ``root/.stages``."""

    def __init__(self, root: Path, environment: dict, out=sys.stdout):
        self.root, self.environment, self.out = Path(root), environment, out
        self.logs, self.markers = self.root / "logs", self.root / ".stages"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.markers.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def done(self, name: str, after: Sequence[str] = (), key: str = "") -> bool:
        """Finished with the same ``key`` (e.g. the trainers compared), and after every stage it depends on last
        finished (make-like, by marker time)."""
        marker = self.markers / f"{name}.done"
        return self._valid(marker, after) and _read_json(marker).get("key", "") == key

    def started(self, name: str, after: Sequence[str] = ()) -> bool:
        """Begun (perhaps interrupted) since its dependencies last finished: its partial output may be resumed."""
        return self._valid(self.markers / f"{name}.started", after)

    def _valid(self, marker: Path, after: Sequence[str]) -> bool:
        if not marker.is_file():
            return False
        dependencies = [self.markers / f"{d}.done" for d in after]
        return all(d.is_file() and d.stat().st_mtime <= marker.stat().st_mtime for d in dependencies)

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def run(self, name: str, action: Sequence | Callable[[], str | None], describe: str,
            after: Sequence[str] = (), environment: dict | None = None, key: str = "") -> bool:
        """Run a command line (streamed to the console and the log, with ``environment`` added to the demo's) or
        a Python callable (its returned text is printed and logged), unless the stage is done with the same
        ``key`` and newer than the stages it depends on (``after``). Returns True if it ran now.
        """
        self.count += 1
        if self.done(name, after, key):
            self.say(f"[{self.count}] {describe}: done before, skipped")
            return False
        self.say(f"[{self.count}] {describe} (log: {self.log_file(name)})")
        (self.markers / f"{name}.done").unlink(missing_ok=True)
        (self.markers / f"{name}.started").touch()
        start = time.time()
        try:
            if callable(action):
                self._python(name, action)
            else:
                self._command(name, [str(a) for a in action], environment or {})
        except KeyboardInterrupt:
            raise StageError(f"interrupted during stage '{name}' (log: {self.log_file(name)}); run the same "
                             f"command again to resume") from None
        seconds = time.time() - start
        atomic_write_json(self.markers / f"{name}.done",
                          {"seconds": round(seconds, 1), "finished": time.ctime(), "key": key})
        self.say(f"    {describe}: {seconds:.0f} s")
        return True

    def _python(self, name: str, action: Callable[[], str | None]) -> None:
        with open(self.log_file(name), "w") as log:
            try:
                text = action()
            except Exception as e:  # keep the traceback in the stage's log
                traceback.print_exc(file=log)
                log.close()
                raise StageError(self._failure(name, f"{type(e).__name__}: {e}")) from e
            if text:
                log.write(text + "\n")
                self.say("    " + text.replace("\n", "\n    "))

    def _command(self, name: str, command: list[str], environment: dict) -> None:
        command = [_executable(command[0]), *command[1:]]
        with open(self.log_file(name), "wb") as log:
            log.write(("$ " + " ".join(command) + "\n").encode())
            log.flush()
            try:
                process = subprocess.Popen(command, env={**self.environment, **environment}, cwd=self.root,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            except FileNotFoundError as e:
                raise StageError(self._failure(name, f"command not found: {command[0]} (is nnU-Net installed in "
                                                     f"this environment?)")) from e
            output = cast(io.BufferedReader, process.stdout)  # stdout=PIPE: a buffered reader
            try:
                for chunk in iter(lambda: output.read1(4096), b""):
                    log.write(chunk)
                    self._echo(chunk)
                code = process.wait()
            except KeyboardInterrupt:
                process.kill()
                process.wait()
                raise
        if code != 0:
            raise StageError(self._failure(name, f"{command[0]} exited with code {code}"))

    def _echo(self, chunk: bytes) -> None:
        """The tool's own output (progress bars included) to the console as it comes."""
        if hasattr(self.out, "buffer"):
            self.out.buffer.write(chunk)
        else:
            self.out.write(chunk.decode(errors="replace"))
        self.out.flush()

    def _failure(self, name: str, reason: str) -> str:
        log = self.log_file(name)
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
        return (f"stage '{name}' failed: {reason}\nits log: {self.log_file(name)}\n"
                + "".join(f"  | {line}\n" for line in tail)
                + "fix the cause and run the same command again to resume (or add --clean to start over)")

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _executable(name: str) -> str:
    """A command line tool of this Python environment (even when its bin folder is not on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def demo_environment(root: Path, extra: dict) -> dict:
    """The user's environment with nnU-Net's folders inside ``root`` (the user's own folders are never used)."""
    env = dict(os.environ)
    env.update({"nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
                "nnUNet_results": str(root / "nnUNet_results"), "nnUNet_compile": "f",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env
