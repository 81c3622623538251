"""Console helpers of the demo: timestamped messages, steps, and commands whose output is logged and
(partly) streamed to the console."""
import ast
import os
import re
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional

from nnunet_mona.cli.logged_command import run_with_log

try:
    import resource
except ImportError:  # Windows: no CPU times of child processes
    resource = None


class DemoError(RuntimeError):
    """A problem the user can fix (the message says how); printed without a traceback."""


def now() -> str:
    return time.strftime("%H:%M:%S")


def log(message: str = "") -> None:
    print(f"[{now()}] {message}", flush=True)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished child processes."""
    if resource is None:
        return 0.0
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextmanager
def step(title: str, timings: Optional[Dict[str, float]] = None, key: Optional[str] = None,
         cpu_timings: Optional[Dict[str, float]] = None):
    """Prints '==> title' before and 'done in ...' after; stores the wall time in ``timings[key]`` and the CPU
    time (this process and its children) in ``cpu_timings[key]``."""
    print(f"\n[{now()}] ==> {title}", flush=True)
    start, start_cpu = time.time(), cpu_seconds()
    yield
    duration, cpu = time.time() - start, cpu_seconds() - start_cpu
    if timings is not None:
        timings[key or title] = round(duration, 1)
    if cpu_timings is not None:
        cpu_timings[key or title] = round(cpu, 1)
    log(f"    done in {format_seconds(duration)} (CPU time {format_seconds(cpu)})")


def run_command(cmd: List[str], log_file: str, env: Optional[Dict[str, str]] = None,
                echo: Optional[Callable[[str], Optional[str]]] = None, tail_on_error: int = 40) -> None:
    """Run ``cmd``; all of its output (stdout and stderr) goes to ``log_file``. ``echo(line)`` returns the text
    to print on the console for a line, or None to keep it in the log only. Raises DemoError with the last
    lines of the output if the command fails."""
    def show(line: str) -> None:
        text = echo(line) if echo is not None else None
        if text is not None:
            print(text, flush=True)

    try:
        returncode, tail = run_with_log(cmd, log_file, dict(os.environ if env is None else env), show, tail_on_error)
    except FileNotFoundError as e:
        raise DemoError(f"Cannot run {cmd[0]!r}: {e}. Is nnU-Net v2 installed in this Python environment?")
    if returncode != 0:
        raise DemoError(f"This command failed (exit code {returncode}):\n    {' '.join(cmd)}\n"
                        f"Last lines of its output (full log: {log_file}):\n    " + "\n    ".join(tail))


def command_path(name: str) -> str:
    """Absolute path of an installed console script next to this Python (falls back to the bare name)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.isfile(candidate) else name


_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+: ")
_PASS_THROUGH = ("Traceback", "Error", "error:", "WARNING", "Unlabeled pool", "Mean Validation Dice",
                 "Training done", "nonfinite", "non-finite")


class TrainingProgress:
    """Turns nnU-Net's training log into one console line per epoch, prefixed with the trainer's short name:

        [MeanTeacher] epoch  3/10  train_loss -0.412  val_loss -0.520  pseudo Dice 0.91 0.62 0.00  unsup 0.08  12.3s

    Problems (tracebacks, warnings) are passed through as they come."""

    def __init__(self, prefix: str, num_epochs: int):
        self.prefix = prefix
        self.num_epochs = num_epochs
        self.fields: Dict[str, str] = {}

    def __call__(self, line: str) -> Optional[str]:
        text = _TIMESTAMP.sub("", line).strip()
        match = re.match(r"^Epoch (\d+)$", text)
        if match:
            self.fields = {"epoch": match.group(1)}
            return None
        for key in ("train_loss", "val_loss"):
            if text.startswith(key + " "):
                self.fields[key] = text.split()[-1]
                return None
        if text.startswith("Pseudo dice"):
            values = re.findall(r"(nan|[-+]?\d*\.?\d+(?:e[-+]?\d+)?)\)", text)
            self.fields["dice"] = " ".join("n/a" if v == "nan" else f"{float(v):.2f}" for v in values)
            return None
        if text.startswith("loss terms {"):  # semi-supervised trainers: "loss terms {...} (unsupervised ramp x)"
            try:
                terms = ast.literal_eval(text[len("loss terms "):text.rindex("}") + 1])
            except (ValueError, SyntaxError):
                terms = {}
            self.fields["terms"] = [f"{k} {float(v):.3f}" for k, v in terms.items()
                                    if k != "sup" and not (k == "skipped_steps" and not v)]
            return None
        if text.startswith("Epoch time:"):
            return self._epoch_line(text.split(":", 1)[1].strip())
        if any(p in text for p in _PASS_THROUGH):
            return f"{self.prefix} {text}"
        return None

    def _epoch_line(self, duration: str) -> str:
        f = self.fields
        epoch = int(f.get("epoch", -1)) + 1
        parts = [f"{self.prefix} epoch {epoch:>3d}/{self.num_epochs}"]
        if "train_loss" in f:
            parts.append(f"train_loss {f['train_loss']}")
        if "val_loss" in f:
            parts.append(f"val_loss {f['val_loss']}")
        if "dice" in f:
            parts.append(f"pseudo Dice {f['dice']}")
        parts.extend(f.get("terms", []))
        parts.append(duration.replace(" ", ""))
        self.fields = {}
        return "  ".join(parts)
