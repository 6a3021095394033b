"""Resumable stages: each runs once, logs to its own file and leaves a marker only when it succeeded.

A stage whose marker is missing runs again from its start (its own outputs are overwritten, or resumed where the
tool supports it, e.g. ``nnUNetv2_train --c``), so an interrupted demo is finished by running it again.

The console shows one line per stage (``[k/n]``) and, for a command stage given a ``progress`` reader, the lines
that reader makes of the tool's output (one per training epoch, :class:`EpochProgress`); the tool's full output
goes to the stage's log, and to the console too when ``verbose``.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from nnunet_blob.files import atomic_write_json


class StageError(RuntimeError):
    """A stage failed; the message names the stage, its log file and what to run next."""


class Stages:
    """Runs ``total`` named stages in ``root``, logs in ``root/logs``, markers in ``root/.stages``; ``verbose``
    streams every tool's full output to ``out``."""

    def __init__(self, root: Path, environment: dict, total: int, out=sys.stdout, verbose: bool = False):
        self.root, self.environment, self.out = Path(root), environment, out
        self.total, self.verbose = total, verbose
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

    def remove_stale(self, folder: Path) -> None:
        """Delete the partial output of a stage that will start afresh."""
        shutil.rmtree(folder, ignore_errors=True)

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def run(self, name: str, action: Sequence | Callable[[], str | None], describe: str,
            after: Sequence[str] = (), environment: dict | None = None, key: str = "",
            progress: Callable[[str], str | None] | None = None, verbose_note: str = "") -> bool:
        """Run a command line (logged, with ``environment`` added to the demo's; each line of its output given to
        ``progress``, whose returned lines are printed, or everything streamed when ``verbose``, after
        ``verbose_note``) or a Python callable (its returned text is printed and logged), unless the stage is done
        with the same ``key`` and newer than the stages it depends on (``after``). Returns True if it ran now.
        """
        self.count += 1
        step = f"[{self.count}/{self.total}]"
        if self.done(name, after, key):
            self.say(f"{step} {describe}: done before, skipped")
            return False
        self.say(f"{step} {describe} (log: {self.log_file(name)})")
        if self.verbose and verbose_note:
            self.say("    " + verbose_note)
        (self.markers / f"{name}.done").unlink(missing_ok=True)
        (self.markers / f"{name}.started").touch()
        start = time.time()
        try:
            if callable(action):
                self._python(name, action)
            else:
                self._command(name, [str(a) for a in action], environment or {}, progress)
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

    def _command(self, name: str, command: list[str], environment: dict,
                 progress: Callable[[str], str | None] | None) -> None:
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
            pending = b""
            try:
                for chunk in iter(lambda: output.read1(4096), b""):
                    log.write(chunk)
                    if self.verbose:
                        self._echo(chunk)
                    elif progress is not None:
                        *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                        self._progress(progress, lines)
                if progress is not None and not self.verbose:
                    self._progress(progress, [pending])
                code = process.wait()
            except KeyboardInterrupt:
                _end(process)
                raise
        if code != 0:
            raise StageError(self._failure(name, f"{command[0]} exited with code {code}"))

    def _progress(self, progress: Callable[[str], str | None], lines: list[bytes]) -> None:
        for line in lines:
            shown = progress(line.decode(errors="replace"))
            if shown:
                self.say("    " + shown)

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


#: nnU-Net's time stamp before each line of its training log (``print_to_log_file``)
_TIME_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?: ")
#: numbers in nnU-Net's printed values (``-0.41``, ``[np.float32(0.87), np.float32(0.5)]``, ``nan``)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|\bnan\b")


#: nnU-Net's (and nnunet_blob's online F1) line prefix -> name in the epoch line, in the epoch line's order
_EPOCH_VALUES = {"train_loss": "train loss", "val_loss": "val loss", "Pseudo dice": "pseudo Dice",
                 "Online instance F1": "instance F1"}


class EpochProgress:
    """Reads ``nnUNetv2_train``'s output line by line and makes one line per epoch, ``epoch 3/12: train loss ...,
    val loss ..., pseudo Dice ..., instance F1 ..., 4.1 s``, from nnU-Net's ``Epoch N``, ``train_loss``,
    ``val_loss``, ``Pseudo dice`` and ``Epoch time`` lines and nnunet_blob's online instance F1; nnunet_blob's own
    ``nnunet_blob:`` lines pass through, and the end of the epochs is announced (nnU-Net then validates)."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.epoch: int | None = None
        self.values: dict[str, str] = {}

    def __call__(self, line: str) -> str | None:
        text = _TIME_STAMP.sub("", line.strip())
        if text.startswith("nnunet_blob:"):
            return text
        if text == "Training done.":
            return "epochs done; nnU-Net validates on the fold's validation cases"
        match = re.fullmatch(r"Epoch (\d+)", text)
        if match:
            self.epoch, self.values = int(match.group(1)), {}
            return None
        for prefix, key in _EPOCH_VALUES.items():
            if text.startswith(prefix):
                numbers = _NUMBER.findall(text[len(prefix):].split("{")[0])
                self.values[key] = (numbers or ["?"])[0] if len(numbers) < 2 else f"[{', '.join(numbers)}]"
                return None
        if text.startswith("Epoch time:") and self.epoch is not None:
            seconds = (_NUMBER.findall(text) or ["?"])[0]
            parts = [f"{key} {self.values[key]}" for key in _EPOCH_VALUES.values() if key in self.values]
            parts.append(f"{seconds} s")
            return f"epoch {self.epoch + 1}/{self.epochs}: " + ", ".join(parts)
        return None


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


#: seconds a tool is given to end on its own after Ctrl-C (then it is killed)
STOP_SECONDS = 10.0


def _end(process: subprocess.Popen) -> None:
    """After Ctrl-C: the terminal sent it to the tool too, which ends its workers and removes its temporary files;
    it is given :data:`STOP_SECONDS` for that (a second Ctrl-C cuts the wait short), then killed."""
    try:
        process.wait(timeout=STOP_SECONDS)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
