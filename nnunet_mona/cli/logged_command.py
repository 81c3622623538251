"""Run a command with all of its output appended to a log file, line by line, while the caller
decides what to show on the console (shared by the demo and the benchmark)."""
import os
import subprocess
import time
from collections import deque
from typing import Callable, Dict, List, Optional, Tuple


def run_with_log(cmd: List[str], log_file: str, env: Dict[str, str],
                 on_line: Optional[Callable[[str], None]] = None, tail_lines: int = 30) -> Tuple[int, List[str]]:
    """Run ``cmd`` with ``env`` (plus PYTHONUNBUFFERED, so lines arrive while it runs); stdout and stderr
    go to ``log_file`` (appended, after a header with the command). ``on_line`` sees every line without
    its newline. Returns (exit code, last ``tail_lines`` lines). A missing executable raises
    FileNotFoundError; if the caller is interrupted the child is terminated."""
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    env = dict(env, PYTHONUNBUFFERED="1")
    tail = deque(maxlen=tail_lines)
    with open(log_file, "a", encoding="utf-8") as f:
        f.write(f"\n### [{time.strftime('%Y-%m-%d %H:%M:%S')}] {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=env, errors="replace")
        try:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                line = line.rstrip("\n")
                tail.append(line)
                if on_line is not None:
                    on_line(line)
            proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    return proc.returncode, list(tail)
