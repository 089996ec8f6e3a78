"""Running the command line and the examples as users do: separate processes, read as they write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: Optional[Mapping[str, str]] = None, drop: Sequence[str] = ()) -> Dict[str, str]:
    """The environment for a child: this checkout first on the path, broker credentials removed
    (so a developer's real ones never reach a test), then ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UPSTOX_", "FIRSTOCK_", "CLEARSTREET_")) and k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run(*args: str, env: Optional[Mapping[str, str]] = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``python *args`` to the end."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(env) if env is not None else child_env())


class Process:
    """``python *args`` in the background; its output is collected line by line as it comes."""

    def __init__(self, *args: str, env: Optional[Mapping[str, str]] = None) -> None:
        self.proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(env) if env is not None else child_env())
        self.out: List[str] = []
        self.err: List[str] = []
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, lines: List[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 15.0, count: int = 1) -> List[str]:
        """Wait until ``count`` stdout lines contain ``text``; returns them (asserts)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.out if text in line]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._alive()):
                    raise AssertionError(f"no {count} line(s) with {text!r} in time; stdout:\n"
                                         + "\n".join(self.out[-30:]) + "\nstderr:\n" + "\n".join(self.err[-30:]))
                self._cond.wait(min(remaining, 0.1))

    def _alive(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def interrupt(self, timeout: float = 15.0) -> int:
        """Ctrl-C (SIGINT) and wait for the end; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the end (and for its output); returns the exit code."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        return code

    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self.out)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.err)

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
