"""Run a command with all its output in a log file and a short progress line per epoch on the console.

Safe to use from several threads at once (``--parallel``): console lines are printed whole, with a prefix that
names the run.
"""
import os
import re
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

from nnunet_mona.cli.logged_command import run_with_log

_PRINT_LOCK = threading.Lock()
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+: ")


class BenchmarkError(RuntimeError):
    """A problem the user can fix (the message says how); printed without a traceback."""


def say(message: str) -> None:
    """One timestamped console line (thread-safe)."""
    with _PRINT_LOCK:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def command_path(name: str) -> str:
    """Absolute path of a console script next to this Python (falls back to the bare name)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.isfile(candidate) else name


class EpochProgress:
    """Turns nnU-Net's training output into ``epoch 3/50  train_loss -0.41  12.3 s`` lines."""

    def __init__(self, num_epochs: int):
        self.num_epochs = num_epochs
        self.epoch: Optional[str] = None
        self.loss: Optional[str] = None

    def __call__(self, line: str) -> Optional[str]:
        text = _TIMESTAMP.sub("", line).strip()
        match = re.match(r"^Epoch (\d+)$", text)
        if match:
            self.epoch, self.loss = match.group(1), None
        elif text.startswith("train_loss "):
            self.loss = text.split()[-1]
        elif text.startswith("Epoch time:") and self.epoch is not None:
            loss = f"  train_loss {self.loss}" if self.loss else ""
            return f"epoch {int(self.epoch) + 1}/{self.num_epochs}{loss}  {text.split(':', 1)[1].strip()}"
        elif text.startswith("Traceback") or "Error" in text.split(":")[0]:
            return text
        return None


def run_logged(cmd: List[str], log_file: str, env: Dict[str, str], prefix: str,
               progress: Optional[Callable[[str], Optional[str]]] = None, tail_lines: int = 30) -> None:
    """Run ``cmd`` with ``env``; stdout and stderr go to ``log_file`` (appended). ``progress(line)`` returns a
    console line or None. Raises :class:`BenchmarkError` with the last lines of the output when it fails."""
    def show(line: str) -> None:
        text = progress(line) if progress is not None else None
        if text:
            say(f"{prefix} {text}")

    try:
        returncode, tail = run_with_log(cmd, log_file, env, show, tail_lines)
    except FileNotFoundError as e:
        raise BenchmarkError(f"Cannot run {cmd[0]!r}: {e}. Is nnU-Net v2 installed in this environment?")
    if returncode != 0:
        raise BenchmarkError(f"{prefix} failed (exit code {returncode}): {' '.join(cmd)}\n"
                             f"Last lines (full log: {log_file}):\n    " + "\n    ".join(tail))
