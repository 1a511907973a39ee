"""Worker-process pools, started the same way by every stage that uses them.

Fork where the platform has it and it is safe (not on macOS, where system frameworks are not
fork-safe): the workers inherit what the parent loaded (template, anatomy, head model), so
they start at once. Elsewhere (Windows, macOS) the workers are spawned fresh.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """The multiprocessing context for a ``ProcessPoolExecutor`` (fork or spawn, see above)."""
    fork = "fork" in mp.get_all_start_methods() and sys.platform != "darwin"
    return mp.get_context("fork" if fork else "spawn")
