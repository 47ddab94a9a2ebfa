"""The crash test, small enough for CI: the real service SIGKILLed mid-work several times while a realistic
workload is published; afterwards every event is on disk exactly once, in order, chained, nothing pending.
``python bench/crash.py --kills 50`` runs the same check by hand with more kills."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_crash_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_crash", BENCH / "crash.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_crash"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_kill_9_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    crash = _load_crash_module()

    report = crash.run(tmp_path, kills=6, events=12_000, seed=11)

    assert report.kills == 6
    assert report.ok, report.line() + "\n" + "\n".join(report.problems[:20])
    assert report.events == 12_000
