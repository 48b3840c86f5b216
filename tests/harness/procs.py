"""Child processes for the reliability trials: a ``domainlm`` command forked from this warm process (or
exec'd), its output in files, and helpers that compare runs and read what the commands printed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

RUN_TIMEOUT = 1200  # seconds one command may take on a heavily shared machine before the trial fails
FAKE_TOKEN = "hf_FAKEreliabilityTOKEN0123456789abcdefXYZ"

# Settings every child gets: one thread (bitwise-reproducible runs, and fair to a shared machine), offline,
# no progress bars, quiet transformers.
CHILD_ENV: dict[str, str | None] = {
    "DOMAINLM_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "DOMAINLM_FAULT": None,
}


@dataclass
class Trial:
    """One row of a detail table: what was done and what happened."""

    klass: str
    name: str
    seed: int | None
    tried: str
    outcome: str
    ok: bool
    seconds: float = 0.0


# ====================================================================================================
# Child processes
# ====================================================================================================

class Proc:
    """A ``domainlm`` command running in a child process, with its stdout/stderr in files."""

    def __init__(self, argv: list[str], logs: Path, name: str, *, env: dict[str, str | None] | None = None,
                 launcher: str = "fork", hook: Callable[[], None] | None = None):
        logs.mkdir(parents=True, exist_ok=True)
        self.argv = [str(a) for a in argv]
        self.out_path, self.err_path = logs / f"{name}.stdout", logs / f"{name}.stderr"
        self.rc: int | None = None
        self.seconds = 0.0
        full_env = {**CHILD_ENV, **(env or {})}
        self.t0 = time.monotonic()
        self.popen = None
        if launcher == "fork" and hasattr(os, "fork"):
            self.pid = os.fork()
            if self.pid == 0:
                _child_main(self.argv, full_env, self.out_path, self.err_path, hook)
        else:
            if hook is not None:
                raise ValueError("in-process hooks need --launcher fork")
            environ = dict(os.environ)
            for k, v in full_env.items():
                if v is None:
                    environ.pop(k, None)
                else:
                    environ[k] = v
            with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
                self.popen = subprocess.Popen([sys.executable, "-m", "domainlm", *self.argv], stdout=out, stderr=err,
                                              env=environ)
            self.pid = self.popen.pid

    def poll(self) -> int | None:
        if self.rc is None:
            if self.popen is not None:
                self.rc = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.rc = os.waitstatus_to_exitcode(status)
            if self.rc is not None:
                self.seconds = time.monotonic() - self.t0
        return self.rc

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                self.kill()
                raise TimeoutError(f"`domainlm {' '.join(self.argv[:2])}` ran over {timeout:.0f} s")
            time.sleep(0.02)
        return self.rc  # type: ignore[return-value]

    def sleep(self, seconds: float) -> bool:
        """Sleep while the command runs; False when it ended first."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.poll() is not None:
                return False
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
        return self.poll() is None

    def wait_for(self, predicate: Callable[[], bool], interval: float = 0.005) -> bool:
        """Poll ``predicate`` while the command runs; False when it ended first."""
        while self.poll() is None:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.005)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")


def _child_main(argv: list[str], env: dict[str, str | None], out: Path, err: Path,
                hook: Callable[[], None] | None) -> None:
    """The forked child: run ``domainlm.cli.main(argv)`` as ``python -m domainlm`` would, then exit. Never returns."""
    code = 1
    try:
        for fd, path in ((1, out), (2, err)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if "huggingface_hub" in sys.modules:  # its constants (HF_HUB_OFFLINE, HF_ENDPOINT) are read at import
            importlib.reload(sys.modules["huggingface_hub"].constants)
        logging.root.handlers.clear()  # handlers of the parent (pytest's capture) would swallow the logs
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        if env.get("TRANSFORMERS_VERBOSITY") and "transformers" in sys.modules:
            with contextlib.suppress(Exception):
                sys.modules["transformers"].logging.set_verbosity(
                    getattr(logging, env["TRANSFORMERS_VERBOSITY"].upper(), logging.ERROR))
        if hook is not None:
            hook()
        from domainlm.cli import main

        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code or 0)


def warm_imports() -> None:
    """Import what the commands use once, so forked children start in a second instead of ~20 s."""
    import torch

    torch.set_num_threads(1)
    import datasets  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: F401

    import domainlm.adapt.run  # noqa: F401
    import domainlm.cli  # noqa: F401
    import domainlm.corpora.run  # noqa: F401
    import domainlm.publish.run  # noqa: F401


def no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


def last_line(text: str, limit: int | None = 240) -> str:
    """The last non-empty line (the CLI's one-line error), cut to ``limit`` characters for display."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1][:limit] if limit else lines[-1]) if lines else ""


# ====================================================================================================
# Comparing runs
# ====================================================================================================

def weights_diff(a: Path, b: Path) -> tuple[bool, float]:
    """(bitwise equal, largest absolute difference) of two safetensors files, or two checkpoint folders' weights."""
    import torch
    from safetensors.torch import load_file

    from domainlm.adapt.checkpoint import checkpoint_weights

    x, y = ((checkpoint_weights(f) if f.is_dir() else load_file(str(f))) for f in (a, b))
    if x.keys() != y.keys():
        return False, float("inf")
    equal = all(torch.equal(x[k], y[k]) for k in x)
    diff = max((float((x[k].double() - y[k].double()).abs().max()) for k in x if x[k].numel()), default=0.0)
    return equal, diff


def train_losses(run: Path) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if r.get("type") == "train"]


_RESUMED = re.compile(r"resumed from \S*step-(\d{8}) \(step (\d+)\)")


def resumed_step(stderr: str) -> int | None:
    """The step a ``--resume`` run says it continued from; 0 when it started from the beginning."""
    m = _RESUMED.search(stderr)
    if m:
        return int(m.group(2))
    return 0 if "no complete checkpoint" in stderr else None


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise Hang in the main thread after ``seconds`` (a reader that loops forever is a bug too)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def quiet(logger: str = "domainlm") -> Iterator[None]:
    """Counted skips log a warning each; thousands of mutated files would bury the table."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
