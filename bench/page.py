"""How fast the web page and the CLI answer "what did the agent do on task X?".

A real ``tasklogger serve`` over a private redis-server; one large task (``--rounds`` agent rounds of thinking,
tool call, tool result of up to 5,000 characters, output and metrics: five records each) is published and
consumed. Then, with Debian's chromium driven by Playwright (headless):

- **task view**: from navigation start until every record of the task is drawn in the timeline and the final
  result is shown (median of ``--repeat`` loads);
- **task list**: from navigation start until the first rows are drawn;
- **live**: on the open page of a running task, from just before the XADD of a ``task:output`` until its text is
  in the timeline (``--live`` events, one every 100 ms; p50 / p90 / max);
- **CLI**: wall time of ``tasklogger show TASK`` and ``tasklogger tasks`` (process start included).

    python bench/page.py                       # 400 rounds = 2,000 records
    python bench/page.py --rounds 2000 --live 50
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import redis
from common import RedisProcess, Service, machine, wait
from playwright.sync_api import sync_playwright
from workload import text


def publish_task(client: redis.Redis, task_id: str, rounds: int, *, finish: bool = True) -> int:
    """A task of ``rounds`` agent rounds; returns the number of entries."""
    rnd = random.Random(7)
    pipe = client.pipeline(transaction=False)

    def add(kind: str, data: dict[str, object]) -> None:
        pipe.xadd("task_events", {"type": kind, "task_id": task_id, "data": json.dumps(data)})

    add("task:created", {"source": "github", "assigned_agent": "coding", "input_message": "a long task"})
    add("task:started", {})
    cost = 0.0
    for n in range(rounds):
        add("task:thinking", {"content": text(rnd)})
        add("task:tool_call", {"name": rnd.choice(["bash", "read_file", "grep"]), "input": {"n": n},
                               "_tool_use_id": f"u{n}"})  # fmt: skip
        add("task:tool_result", {"name": "bash", "content": text(rnd, limit=5_000), "_tool_use_id": f"u{n}",
                                 "is_error": n % 25 == 0})  # fmt: skip
        add("task:output", {"content": text(rnd)})
        cost += 0.01
        add("task:metrics", {"cost_usd": f"{cost:.4f}", "input_tokens": 1000 * n, "output_tokens": 100 * n})
    if finish:
        add("task:completed", {"status": "completed", "result": "done", "cost_usd": f"{cost:.4f}"})
    pipe.execute()
    return 2 + 5 * rounds + (1 if finish else 0)


def get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.loads(response.read()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400, help="agent rounds of the large task (5 records each)")
    parser.add_argument("--repeat", type=int, default=5, help="loads of the task view")
    parser.add_argument("--live", type=int, default=30, help="live events to time")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("bench/page.py: no chromium on PATH (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="tasklogger-page-"))
    server = RedisProcess(tmp / "redis").start()
    service = Service(tmp / "logs", server.url, command="serve", env={"TASKLOGGER_BLOCK_MS": "50"}).start()
    base = f"http://127.0.0.1:{service.env['PORT']}"
    client = server.client()
    try:
        assert wait(lambda: _up(base), 30), "the service did not start"
        records = publish_task(client, "big", args.rounds)
        for n in range(20):
            publish_task(client, f"small-{n}", 3)
        assert wait(lambda: get(f"{base}/tasks/big").get("status") == "completed", 120), "not consumed"
        print(machine(tmp))
        print(f"\ntask of {records} records, {sum(f.stat().st_size for f in (tmp / 'logs' / 'big').iterdir()):,} bytes")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
            # The page's CSP forbids eval; Playwright's wait_for_function needs it (measuring only).
            page = browser.new_page(viewport={"width": 1440, "height": 900}, bypass_csp=True)
            view = []
            for _ in range(args.repeat):
                page.goto(f"{base}/t/big")
                page.wait_for_function(
                    f"document.querySelectorAll('#timeline > li').length >= {records - args.rounds}"
                    " && !document.getElementById('final').hidden", timeout=120_000)  # fmt: skip
                view.append(page.evaluate("performance.now()"))
            lists = []
            for _ in range(args.repeat):
                page.goto(f"{base}/")
                page.wait_for_selector("#tasks tbody tr")
                lists.append(page.evaluate("performance.now()"))
            publish_task(client, "running", 2, finish=False)
            page.goto(f"{base}/t/running")
            page.wait_for_selector("#live-state.live")
            live = []
            for n in range(args.live):
                marker = f"live-marker-{n}"
                started = time.perf_counter()
                client.xadd("task_events", {"type": "task:output", "task_id": "running",
                                            "data": json.dumps({"content": marker})})  # fmt: skip
                page.wait_for_function(f"document.getElementById('timeline').textContent.includes('{marker}')",
                                       polling="raf")  # fmt: skip
                live.append((time.perf_counter() - started) * 1000)
                time.sleep(0.1)
            browser.close()
        cli = {}
        for name, argv in (("show", ["show", "big"]), ("tasks", ["tasks"])):
            times = []
            for _ in range(3):
                started = time.perf_counter()
                subprocess.run(["tasklogger", *argv, "--url", base], check=True, capture_output=True)
                times.append((time.perf_counter() - started) * 1000)
            cli[name] = statistics.median(times)
        live.sort()
        print(f"task view, {records} records drawn with the final result: median {statistics.median(view):,.0f} ms "
              f"(min {min(view):,.0f}, max {max(view):,.0f})")  # fmt: skip
        print(f"task list, first rows drawn: median {statistics.median(lists):,.0f} ms")
        print(f"live: XADD -> text in the timeline: p50 {live[len(live) // 2]:.0f} ms, "
              f"p90 {live[int(len(live) * 0.9)]:.0f} ms, max {live[-1]:.0f} ms ({len(live)} events)")  # fmt: skip
        print(
            f"CLI: tasklogger show ({records} records) {cli['show']:,.0f} ms; tasklogger tasks {cli['tasks']:,.0f} ms"
        )
    finally:
        client.close()
        service.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _up(base: str) -> bool:
    try:
        return get(f"{base}/livez").get("status") == "ok"
    except OSError:
        return False


if __name__ == "__main__":
    main()
