"""Run every ``Testing/Benchmarks/bench_*.py`` and gather their figures in one JSON file.

Usage (what ``make bench`` runs)::

    python Testing/Benchmarks/run_all.py --out bench_out [--only demo,explain] [--timeout 3600]

Each benchmark runs in its own process as ``python bench_<name>.py --out
<out>/<name>.json`` (its own memory peak, no shared state); its JSON is collected into
``<out>/benchmarks.json`` under ``<name>``, together with its wall time and exit status. A
benchmark that fails is recorded with the tail of its output and the others still run; the
exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover(only: set[str] | None = None) -> list[Path]:
    """The benchmark scripts, sorted by name (optionally only some, by ``bench_<name>``)."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    return scripts


def run_one(script: Path, out_dir: Path, timeout: float) -> dict:
    """Run one benchmark script; return its figures and how the run went."""
    name = script.stem.removeprefix("bench_")
    target = out_dir / f"{name}.json"
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    print(f"== {script.name} -> {target}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(
        [sys.executable, str(script), "--out", str(target)],
        stdout=subprocess.PIPE,
        stderr=None,  # progress bars go straight to the terminal
        text=True,
        encoding="utf-8",
        errors="replace",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: a timeout ends its workers too
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        status, tail = proc.returncode, out[-2000:]
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status, tail = "timeout", (out or "")[-2000:]
    seconds = round(time.perf_counter() - start, 2)
    entry: dict = {"script": script.name, "exit_status": status, "wall_seconds": seconds}
    if target.is_file():
        try:
            entry["figures"] = json.loads(target.read_text(encoding="utf-8"))
        except ValueError as exc:
            entry["error"] = f"{target} is not valid JSON: {exc}"
    else:
        entry["error"] = f"{script.name} wrote no {target.name}"
    if status != 0:
        entry["output_tail"] = tail
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder")
    parser.add_argument("--only", default=None, help="comma-separated names (e.g. demo,model)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",")} if args.only else None
    scripts = discover(only)
    if not scripts:
        print(f"no benchmarks found in {HERE}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "benchmarks": {},
    }
    for script in scripts:
        results["benchmarks"][script.stem.removeprefix("bench_")] = run_one(
            script, args.out, args.timeout
        )
    text = json.dumps(results, indent=2)
    tmp = args.out / ".tmp-benchmarks.json"
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, args.out / "benchmarks.json")
    print(text)
    failed = [n for n, r in results["benchmarks"].items() if r["exit_status"] != 0 or "error" in r]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
