"""The crash test, small enough for every run: the real service (``python -m tasklogger consume``) SIGKILLed at
random moments while the realistic workload is published, then checked by ``bench/crash.py``'s ``check``: every
entry on disk exactly once, in its task file, in stream order, chains intact, JSON views parseable, nothing
pending, lag 0, and ``tasklogger verify`` exits 0 on the directory it
produced. ``python bench/crash.py --kills 50 --events 60000`` runs the same thing bigger, by hand."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_crash_module() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_crash", BENCH / "crash.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_crash"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_kill_9_loses_duplicates_tears_and_reorders_nothing(tmp_path: Path) -> None:
    crash = _load_crash_module()
    started = time.monotonic()

    report = crash.run(tmp_path, kills=4, events=6_000, seed=11, rate=1_500.0, timeout=50.0)

    assert report.kills == 4
    assert report.events == 6_000
    assert report.ok, report.line() + "\n" + "\n".join(report.problems[:20])
    assert report.audit == 0  # kill -9 and torn-tail repair never break a chain or a seal
    assert time.monotonic() - started < 60
