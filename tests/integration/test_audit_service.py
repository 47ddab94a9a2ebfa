"""The audit trail in the real service process: signed digests and periodic checkpoints while it runs, the
shutdown checkpoint at SIGTERM, ``tasklogger verify`` on what it left, and ``GET /tasks/{id}/export``."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import redis

from tasklogger.audit.bundle import verify_bundle
from tasklogger.audit.checkpoints import CHECKPOINTS_REL
from tasklogger.audit.signing import generate
from tests.integration.test_audit import DONE, FAILED, RUNNING, publish_tasks
from tests.support import Publisher, ServiceProcess, group_drained, wait_until


def _get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


def test_signed_service_checkpoints_and_exports_and_its_directory_verifies(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path, tmp_path: Path
) -> None:
    key = tmp_path / "signing.pem"
    signer = generate(key)
    env = {"TASKLOGGER_SIGNING_KEY": str(key), "TASKLOGGER_CHECKPOINT_INTERVAL_S": "0.3"}
    service = ServiceProcess(logs_dir, redis_url, env=env).start()
    try:
        publish_tasks(publisher)
        wait_until(lambda: group_drained(client), timeout=20, what="the service to drain the stream")
        checkpoints = logs_dir / CHECKPOINTS_REL
        wait_until(lambda: checkpoints.exists() and f"{RUNNING}/".encode() in checkpoints.read_bytes(),
                   timeout=10, what="a periodic checkpoint")  # fmt: skip

        status, body, content_type = _get(service.port, f"/tasks/{DONE}/export")
        assert status == 200 and content_type == "application/gzip"
        bundle = tmp_path / "done.tar.gz"
        bundle.write_bytes(body)
        assert verify_bundle(bundle, signer.public).ok
        assert _get(service.port, "/tasks/no-such-task/export")[0] == 404

        publisher.event("task:output", task_id=RUNNING, data={"content": "one more"})
        wait_until(lambda: group_drained(client), timeout=20, what="the last entry")
        assert service.terminate() == 0
    finally:
        service.kill()

    lines = [orjson.loads(x) for x in (logs_dir / CHECKPOINTS_REL).read_bytes().splitlines()]
    assert [c["reason"] for c in lines][:2] == ["start", "interval"] and lines[-1]["reason"] in ("interval", "shutdown")
    assert lines[0]["heads"] == {} and f"{DONE}/05-digests.jsonl" in {rel for c in lines for rel in c["heads"]}
    assert all(c["key_id"] == signer.key_id for c in lines)
    public = tmp_path / "signing.pem.pub"
    result = subprocess.run(
        [sys.executable, "-m", "tasklogger", "verify", "--logs-dir", str(logs_dir), "--public-key", str(public)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("3 tasks, ")
    assert (logs_dir / DONE / "05-digests.jsonl").exists() and (logs_dir / FAILED / "05-digests.jsonl").exists()
