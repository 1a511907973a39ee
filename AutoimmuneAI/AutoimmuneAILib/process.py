"""Run the heavy work in a background process, with progress, output and a working Cancel.

The Slicer GUI must not freeze while a model runs, and a user must be able to stop it. A
reader thread copies the child's output into a queue; the main thread drains the queue with
``poll()`` (from a Qt timer in the GUI, or in a loop when a script waits). ``cancel()`` kills
the whole process tree, not only the launcher. No Qt here: the caller owns the timer.

Usage::

    proc = BackgroundProcess(["python", "-m", "autoimmuneai", "predict", ...],
                             onLine=print, onProgress=lambda f, text: ...)
    proc.start()
    returncode = proc.wait()          # scripts; the GUI calls proc.poll() from a QTimer
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CANCELLED = -1000  # returncode reported after cancel()

_PERCENT = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)\s*%")
_COUNT = re.compile(r"(?<![\d/.:])(\d+)\s*/\s*(\d+)(?![\d/:])")


@dataclass(frozen=True)
class Progress:
    """A fraction in [0, 1] (None when the line carries no figure) and the text it came from."""

    fraction: float | None
    text: str


def parse_progress(line: str) -> Progress:
    """Read a progress figure from one output line ("40%|####", "case 3/12", "[2/5] train").

    Titres such as "1:160" and dates are not taken for counts; a percentage wins over a count.
    """
    text = line.strip()
    match = _PERCENT.search(text)
    if match:
        value = float(match.group(1))
        if 0.0 <= value <= 100.0:
            return Progress(value / 100.0, text)
    match = _COUNT.search(text)
    if match:
        done, total = int(match.group(1)), int(match.group(2))
        if total > 0 and 0 <= done <= total:
            return Progress(done / total, text)
    return Progress(None, text)


class BackgroundProcess:
    """One child process: started, read line by line, polled, waited for or cancelled."""

    def __init__(
        self,
        command: Sequence[str],
        onLine: Callable[[str], None] | None = None,
        onProgress: Callable[[Progress], None] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.command = [str(c) for c in command]
        self.onLine = onLine
        self.onProgress = onProgress
        self.env = env
        self.cwd = cwd
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._readerDone = False
        self.cancelled = False
        self.returncode: int | None = None
        self.lines: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child with stdout and stderr merged, in its own process group."""
        kwargs: dict = {
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "stdin": subprocess.DEVNULL,
            "env": self.env,
            "cwd": self.cwd,
        }
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        self._proc = subprocess.Popen(self.command, **kwargs)
        self._thread = threading.Thread(target=self._read, name="AutoimmuneAI-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        """Reader thread: split the byte stream on newlines and carriage returns (tqdm)."""
        assert self._proc is not None and self._proc.stdout is not None
        buffer = b""
        stream = self._proc.stdout
        while True:
            chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
            if not chunk:
                break
            buffer += chunk
            parts = re.split(rb"[\r\n]", buffer)
            buffer = parts.pop()
            for part in parts:
                if part.strip():
                    self._queue.put(part.decode("utf-8", errors="replace"))
        if buffer.strip():
            self._queue.put(buffer.decode("utf-8", errors="replace"))
        self._queue.put(None)

    def poll(self) -> bool:
        """Deliver queued lines to the callbacks; return True once the process has finished."""
        if self._proc is None:
            raise RuntimeError("process not started")
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._readerDone = True
                continue
            self.lines.append(line)
            if self.onLine:
                self.onLine(line)
            progress = parse_progress(line)
            if self.onProgress and progress.fraction is not None:
                self.onProgress(progress)
        if self.returncode is None and self._readerDone and self._proc.poll() is not None:
            self.returncode = CANCELLED if self.cancelled else self._proc.returncode
        return self.returncode is not None

    def wait(self, interval: float = 0.05, timeout: float | None = None) -> int:
        """Block until the process ends (scripts, tests); return its exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{self.command[0]} did not finish in {timeout} s")
            time.sleep(interval)
        return int(self.returncode)  # type: ignore[arg-type]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def isRunning(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cancel(self) -> None:
        """Kill the process and every process it started (workers, the Slicer launcher's child)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self.cancelled = True
        killTree(self._proc.pid)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def output(self) -> str:
        """All lines read so far (poll() first)."""
        return "\n".join(self.lines)


def killTree(pid: int) -> None:
    """Kill ``pid`` and its descendants: its process group on POSIX, ``taskkill /T`` on Windows."""
    if sys.platform == "win32":
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
