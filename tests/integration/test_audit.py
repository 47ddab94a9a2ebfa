"""The audit trail over directories the real consumer wrote from a real Redis: a clean directory verifies clean,
and each kind of tampering is found in the right file at the right line; reseals, seals decided from state,
evidence bundles, the export endpoint and the CLI's exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tasklogger import records
from tasklogger.audit.bundle import verify_bundle
from tasklogger.audit.chain import (
    CHANGED,
    MISSING,
    REORDERED,
    SIGNATURE,
    TASK_DIRECTORY_MISSING,
    TRUNCATED,
    UNSEALED,
    UNSEALED_CHANGE,
)
from tasklogger.audit.checkpoints import CHECKPOINTS_REL
from tasklogger.audit.digests import DIGESTS
from tasklogger.audit.http import integrity_state
from tasklogger.audit.signing import Signer
from tasklogger.audit.verify import Report, verify_logs_dir
from tasklogger.consumer import Consumer
from tasklogger.projector import project
from tasklogger.store import Store
from tasklogger.wire import decode
from tests.support import ConsumerRun, Publisher, RedisProcess, settings_for

AGENT = "03-agent-output.jsonl"
FINAL = "04-final-result.json"
DONE, RUNNING, FAILED = "t-done", "t-running", "t-failed"


def publish_tasks(pub: Publisher) -> None:
    """Three tasks: one completed (with a webhook flow and a user input), one still running, one failed."""
    pub.event("webhook:received", webhook_event_id="w-1", data={"source": "github", "payload_size": 812})
    pub.event("webhook:task_created", webhook_event_id="w-1", data={"task_id": DONE, "source": "github"})
    pub.event("task:created", task_id=DONE, data={"source": "github", "assigned_agent": "coder", "user_id": "u1"})
    pub.event("task:started", task_id=DONE, data={"session_id": "s1"})
    for n in range(4):
        pub.event("task:output", task_id=DONE, data={"content": f"step {n} of the fix"})
    pub.event("task:user_input", task_id=DONE, data={"content": "yes, go on", "question_type": "confirm"})
    pub.event("task:tool_call", task_id=DONE, data={"name": "bash", "input": {"cmd": "pytest"}})
    pub.event("task:completed", task_id=DONE, data={"status": "completed", "cost_usd": "0.42", "exit_code": 0})
    pub.event("task:created", task_id=RUNNING, data={"source": "jira", "assigned_agent": "planner"})
    for n in range(5):
        pub.event("task:output", task_id=RUNNING, data={"content": f"thinking {n}"})
    pub.event("task:created", task_id=FAILED, data={"source": "slack"})
    pub.event("task:failed", task_id=FAILED, data={"error": "out of budget"})


def consume(redis_url: str, logs_dir: Path, signer: Signer | None, *, checkpoint: bool = True) -> Store:
    """Run the real consumer until the stream is drained, then (as the service does at shutdown) checkpoint."""
    settings = settings_for(redis_url, logs_dir)
    store = Store(logs_dir, fsync_threads=settings.fsync_threads, sync_mode=settings.sync_mode)
    store.open()
    store.audit.signer = signer
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    run = ConsumerRun(settings, client, store, Consumer(settings, client, store, "audit-test")).start()
    try:
        run.wait_drained()
    finally:
        run.close()
    if checkpoint:
        store.audit.checkpoint("shutdown")
    return store


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def written(redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Path:
    """One directory written by the consumer (signed), copied by each test before it tampers with it."""
    client = redis_proc.client()
    client.flushall()
    publish_tasks(Publisher(client))
    logs_dir = tmp_path_factory.mktemp("audit") / "logs"
    consume(redis_proc.url, logs_dir, signer)
    client.flushall()
    client.close()
    return logs_dir


@pytest.fixture
def logs(written: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "logs"
    shutil.copytree(written, copy, symlinks=True)
    return copy


def found(report: Report) -> set[tuple[str | None, int | None, str]]:
    return {(p.file, p.line, p.kind) for p in report.problems}


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(edit(lines_of(path))))


def forged_line(path: Path, relpath: str, body: dict[str, Any]) -> bytes:
    """A record chained correctly after the file's last one: what someone holding the files (not the key) can make."""
    last = records.parse_line(lines_of(path)[-1])
    line, _ = records.encode({"seq": last.seq + 1, **body}, last.hash)
    return line


# -- a clean directory ------------------------------------------------------------------------------------------


def test_clean_directory_verifies_clean(written: Path, signer: Signer) -> None:
    report = verify_logs_dir(written, public_key=signer.public)

    assert report.ok, [p.text() for p in report.problems]
    assert report.tasks == 3
    assert report.records == sum(len(lines_of(p)) for p in written.rglob("*.jsonl") if "webhooks" not in p.parts)
    digests = [orjson.loads(x) for x in lines_of(written / DONE / DIGESTS)]
    assert [d["seq"] for d in digests] == [1]
    assert digests[0]["prev_digest"] is None and digests[0]["key_id"] == signer.key_id
    assert set(digests[0]["files"]) == {"metadata.json", "01-input.json", "02-webhook-flow.jsonl", AGENT,
                                        "03-user-inputs.jsonl", FINAL}  # fmt: skip
    assert digests[0]["files"][AGENT]["records"] == len(lines_of(written / DONE / AGENT))
    assert not (written / RUNNING / DIGESTS).exists()
    assert (written / FAILED / DIGESTS).exists()
    checkpoint = orjson.loads(lines_of(written / CHECKPOINTS_REL)[-1])
    assert f"{RUNNING}/{AGENT}" in checkpoint["heads"] and f"{DONE}/{FINAL}" in checkpoint["views"]


# -- tampering, each found at the right file and line ------------------------------------------------------------


def test_one_changed_byte_is_found_at_its_line(logs: Path, signer: Signer) -> None:
    original = lines_of(logs / DONE / AGENT)
    rewrite(logs / DONE / AGENT, lambda ls: [*ls[:2], ls[2].replace(b"step 0", b"step 7"), *ls[3:]])
    assert lines_of(logs / DONE / AGENT) != original

    report = verify_logs_dir(logs, public_key=signer.public)

    assert found(report) == {(f"{DONE}/{AGENT}", 3, CHANGED)}


def test_a_deleted_record_is_found_where_it_was(logs: Path, signer: Signer) -> None:
    rewrite(logs / DONE / AGENT, lambda ls: [ls[0], *ls[2:]])

    report = verify_logs_dir(logs, public_key=signer.public)

    assert found(report) == {(f"{DONE}/{AGENT}", 2, MISSING)}


def test_two_swapped_records_are_found(logs: Path, signer: Signer) -> None:
    rewrite(logs / RUNNING / AGENT, lambda ls: [ls[0], ls[2], ls[1], *ls[3:]])

    report = verify_logs_dir(logs, public_key=signer.public)

    assert found(report) == {(f"{RUNNING}/{AGENT}", 2, REORDERED)}


def test_truncated_tail_of_a_sealed_task_is_found_by_its_digest(logs: Path, signer: Signer) -> None:
    n = len(lines_of(logs / DONE / AGENT))
    rewrite(logs / DONE / AGENT, lambda ls: ls[:-2])

    report = verify_logs_dir(logs, public_key=signer.public)

    assert (f"{DONE}/{AGENT}", n - 1, TRUNCATED) in found(report)
    assert {p.file for p in report.problems} == {f"{DONE}/{AGENT}"}


def test_truncated_tail_of_a_running_task_is_found_by_the_checkpoint(logs: Path, signer: Signer) -> None:
    path = logs / RUNNING / AGENT
    n = len(lines_of(path))
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 40)  # cut inside the last line

    report = verify_logs_dir(logs, public_key=signer.public)

    assert found(report) == {(f"{RUNNING}/{AGENT}", n, TRUNCATED)}
    assert any("checkpoint" in p.detail for p in report.problems)
    assert any("partial last line" in p.detail for p in report.problems)


def test_forged_record_appended_after_the_seal_is_found(logs: Path, signer: Signer) -> None:
    path = logs / DONE / AGENT
    n = len(lines_of(path))
    body = {"id": "9999999999999-0", "type": "task:output", "ts": "2026-01-31T12:00:00Z", "data": {"content": "x"}}
    with path.open("ab") as f:
        f.write(forged_line(path, f"{DONE}/{AGENT}", body))

    report = verify_logs_dir(logs, public_key=signer.public)

    assert found(report) == {(f"{DONE}/{AGENT}", n + 1, UNSEALED_CHANGE)}


def test_record_with_a_made_up_hash_is_found(logs: Path, signer: Signer) -> None:
    path = logs / RUNNING / AGENT
    n = len(lines_of(path))
    with path.open("ab") as f:
        f.write(b'{"seq":%d,"id":"9999999999999-0","type":"task:output","data":{},"hash":"%s"}\n' % (n + 1, b"ab" * 32))

    report = verify_logs_dir(logs, public_key=signer.public)

    assert found(report) == {(f"{RUNNING}/{AGENT}", n + 1, CHANGED)}


@pytest.mark.parametrize("name", [FINAL, "metadata.json"])
def test_json_view_edited_after_the_seal_is_found(logs: Path, signer: Signer, name: str) -> None:
    doc = json.loads((logs / DONE / name).read_text())
    doc["cost_usd" if name == FINAL else "user_id"] = 0.01 if name == FINAL else "someone-else"
    (logs / DONE / name).write_text(json.dumps(doc, indent=2) + "\n")

    report = verify_logs_dir(logs, public_key=signer.public)

    assert found(report) == {(f"{DONE}/{name}", None, CHANGED)}


def test_deleted_task_directory_is_found(logs: Path, signer: Signer) -> None:
    shutil.rmtree(logs / RUNNING)
    shutil.rmtree(logs / DONE)

    report = verify_logs_dir(logs, public_key=signer.public)

    assert found(report) == {(RUNNING, None, TASK_DIRECTORY_MISSING), (DONE, None, TASK_DIRECTORY_MISSING)}


def test_deleted_checkpoint_chain_is_found(logs: Path) -> None:
    (logs / CHECKPOINTS_REL).unlink()

    report = verify_logs_dir(logs)

    assert found(report) == {(CHECKPOINTS_REL, None, MISSING)}


def _forge_digest(logs: Path) -> None:
    """Edit the final result, then replace the last digest by one computed over the edited files (no key)."""
    (logs / DONE / FINAL).write_text((logs / DONE / FINAL).read_text().replace('"completed"', '"cancelled"'))
    path = logs / DONE / DIGESTS
    old = [records.parse_line(x) for x in lines_of(path)]
    body = {k: v for k, v in old[-1].body.items() if k not in ("key_id", "signature")}
    content = (logs / DONE / FINAL).read_bytes()
    body["files"][FINAL] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    prev = old[-2].hash if len(old) > 1 else records.genesis(f"{DONE}/{DIGESTS}")
    line, _ = records.encode(body, prev)
    rewrite(path, lambda ls: [*ls[:-1], line])


def test_replaced_digest_fails_its_signature(logs: Path, signer: Signer) -> None:
    _forge_digest(logs)

    report = verify_logs_dir(logs, public_key=signer.public)

    assert (f"{DONE}/{DIGESTS}", 1, SIGNATURE) in found(report)


def test_replaced_digest_without_a_key_is_found_by_the_checkpoint_chain(logs: Path) -> None:
    _forge_digest(logs)

    report = verify_logs_dir(logs)

    # The checkpoint recorded the digest file's head and the view the digest was forged to cover.
    assert found(report) == {(f"{DONE}/{DIGESTS}", 1, CHANGED), (f"{DONE}/{FINAL}", None, CHANGED)}
    assert all("checkpoint" in p.detail for p in report.problems)


def test_wrong_public_key_fails_every_signature(logs: Path) -> None:
    other = Signer(Ed25519PrivateKey.generate())

    report = verify_logs_dir(logs, public_key=other.public)

    kinds = {(p.file, p.kind) for p in report.problems}
    assert kinds == {(f"{DONE}/{DIGESTS}", SIGNATURE), (f"{FAILED}/{DIGESTS}", SIGNATURE), (CHECKPOINTS_REL, SIGNATURE)}
    assert all("not by the given public key" in p.detail for p in report.problems)


def test_removing_the_only_digest_leaves_an_ended_task_unsealed(logs: Path) -> None:
    (logs / FAILED / DIGESTS).unlink()

    report = verify_logs_dir(logs)

    assert (f"{FAILED}/{DIGESTS}", None, UNSEALED) in found(report)
    assert (f"{FAILED}/{DIGESTS}", None, MISSING) in found(report)  # the checkpoint recorded it


# -- sealing: reseals, and seals decided from what is on disk ---------------------------------------------------


def test_event_after_the_seal_reseals_and_never_edits(redis_url: str, publisher: Publisher, logs_dir: Path) -> None:
    publish_tasks(publisher)
    consume(redis_url, logs_dir, None)
    first = (logs_dir / DONE / DIGESTS).read_bytes()

    publisher.event("task:response_posted", task_id=DONE, data={"method": "comment"})
    consume(redis_url, logs_dir, None)

    after = lines_of(logs_dir / DONE / DIGESTS)
    assert b"".join(after[:1]) == first and len(after) == 2
    second = records.parse_line(after[1])
    assert second.body["prev_digest"] == records.parse_line(after[0]).hash.hex()
    assert second.body["files"][AGENT]["records"] == len(lines_of(logs_dir / DONE / AGENT))
    assert verify_logs_dir(logs_dir).ok
    state = integrity_state(logs_dir, DONE)
    assert integrity_state(logs_dir, "no-such-task") is None
    assert state == {"sealed": True, "digest": second.hash.hex(), "sealed_at": second.body["sealed_at"],
                     "digests": 2}  # fmt: skip


def test_seal_lost_before_it_was_durable_is_written_on_redelivery(
    redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    publish_tasks(publisher)
    consume(redis_url, logs_dir, None, checkpoint=False)
    for task in (DONE, FAILED):
        (logs_dir / task / DIGESTS).unlink()  # as if the process died after the records, before the digest
    assert integrity_state(logs_dir, DONE)["sealed"] is False

    client.xgroup_setid("task_events", "task-logger", "0")  # the whole stream again: every entry a duplicate
    consume(redis_url, logs_dir, None)

    assert verify_logs_dir(logs_dir).ok
    assert integrity_state(logs_dir, DONE)["sealed"] and integrity_state(logs_dir, FAILED)["sealed"]
    assert integrity_state(logs_dir, RUNNING) == {"sealed": False, "digest": None, "sealed_at": None, "digests": 0}


# -- evidence bundles -------------------------------------------------------------------------------------------


def tasklogger(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasklogger", *map(str, args)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def public_key_file(signer: Signer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "signing.pub"
    path.write_bytes(signer.public_pem())
    return path


def test_exported_bundle_verifies_elsewhere_and_tampering_inside_it_is_found(
    written: Path, tmp_path: Path, public_key_file: Path
) -> None:
    bundle = tmp_path / "done.tar.gz"
    exported = tasklogger("export", DONE, "-o", bundle, "--logs-dir", written, "--public-key", public_key_file)
    assert exported.returncode == 0, exported.stderr
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", f"{DONE}/{FINAL}", f"{DONE}/{DIGESTS}", CHECKPOINTS_REL, "signing-key.pub"} <= names

    checked = tasklogger("verify", "--bundle", bundle, "--public-key", public_key_file)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().splitlines()[-1].startswith("1 tasks, 8 files, ")  # 7 of the task, the checkpoints

    # Someone edits the result inside the bundle and fixes up the manifest: the digest still tells.
    members = _members(bundle)
    members[f"{DONE}/{FINAL}"] = members[f"{DONE}/{FINAL}"].replace(b'"completed"', b'"cancelled"')
    manifest = orjson.loads(members["manifest.json"])
    content = members[f"{DONE}/{FINAL}"]
    manifest["files"][f"{DONE}/{FINAL}"] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    members["manifest.json"] = orjson.dumps(manifest)
    forged = tmp_path / "forged.tar.gz"
    _write_members(forged, members)

    result = tasklogger("verify", "--bundle", forged, "--public-key", public_key_file)
    assert result.returncode == 1
    assert f"{DONE}  {DONE}/{FINAL}  changed: changed after the seal" in result.stdout


def test_bundle_checked_against_its_own_key_says_so(written: Path, tmp_path: Path, public_key_file: Path) -> None:
    bundle = tmp_path / "failed.tar.gz"
    exported = tasklogger("export", FAILED, "-o", bundle, "--logs-dir", written, "--public-key", public_key_file)
    assert exported.returncode == 0, exported.stderr
    members = _members(bundle)
    members[f"{FAILED}/{FINAL}"] += b" "
    _write_members(bundle, members)

    report = verify_bundle(bundle)

    assert {(p.file, p.kind) for p in report.problems} == {(f"{FAILED}/{FINAL}", CHANGED)}
    assert any("key shipped in the bundle" in note for note in report.notes)


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _write_members(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# -- the command line -------------------------------------------------------------------------------------------


def test_verify_command_exit_codes_and_output(logs: Path, public_key_file: Path, tmp_path: Path) -> None:
    clean = tasklogger("verify", "--logs-dir", logs, "--public-key", public_key_file)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.splitlines()[-1].startswith("3 tasks, ") and clean.stdout.rstrip().endswith("intact")

    rewrite(logs / DONE / AGENT, lambda ls: [ls[0], *ls[2:]])
    damaged = tasklogger("verify", "--logs-dir", logs, "--json", DONE)
    assert damaged.returncode == 1
    report = json.loads(damaged.stdout)
    assert report["problems"] == [
        {"task": DONE, "file": f"{DONE}/{AGENT}", "line": 2, "kind": "missing", "detail": "record seq 2 deleted "
         "before this line"}
    ]  # fmt: skip

    key_file = tmp_path / "not-a-key.pem"
    key_file.write_text("hello\n")
    for args in (
        ("--logs-dir", tmp_path / "nowhere"),
        ("--logs-dir", logs, "--public-key", key_file),
        ("--logs-dir", logs, "no-such-task"),
        ("--logs-dir", logs, "../etc"),
        ("--bundle", key_file),
    ):
        usage = tasklogger("verify", *args)
        assert usage.returncode == 2, (args, usage.stdout, usage.stderr)
        assert len(usage.stderr.strip().splitlines()) == 1 and usage.stderr.startswith("tasklogger: "), usage.stderr


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "signing.pem"

    made = tasklogger("keygen", "-o", key)

    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    assert b"PUBLIC KEY" in (tmp_path / "signing.pem.pub").read_bytes()
    again = tasklogger("keygen", "-o", key)
    assert again.returncode == 2 and "not overwriting" in again.stderr


# -- crash leftovers in the audit trail's own files ---------------------------------------------------------------


def test_partial_digest_and_checkpoint_lines_are_cut_before_the_next(
    redis_url: str, publisher: Publisher, logs_dir: Path
) -> None:
    publish_tasks(publisher)
    consume(redis_url, logs_dir, None)
    # What a kill -9 in the middle of writing a digest and a checkpoint leaves behind.
    with (logs_dir / DONE / DIGESTS).open("ab") as f:
        f.write(b'{"seq":2,"id":"1-0","type":"tasklogger:dig')
    with (logs_dir / CHECKPOINTS_REL).open("ab") as f:
        f.write(b'{"seq":2,"id":"1-0","ty')
    assert not verify_logs_dir(logs_dir).ok

    publisher.event("notification:ops", task_id=DONE, data={"channel": "ops"})
    consume(redis_url, logs_dir, None)

    assert verify_logs_dir(logs_dir).ok
    assert [records.parse_line(x).seq for x in lines_of(logs_dir / DONE / DIGESTS)] == [1, 2]
    assert [records.parse_line(x).seq for x in lines_of(logs_dir / CHECKPOINTS_REL)] == [1, 2]


def test_views_a_crashed_batch_replaced_are_checkpointed_on_its_redelivery(
    redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    publisher.event("task:created", task_id=RUNNING, data={"input_message": "first"})
    consume(redis_url, logs_dir, None)  # the checkpoint records 01-input.json as it is now
    publisher.event("task:context_built", task_id=RUNNING, data={"enriched_prompt": "more context"})
    # A consumer that died after its commit, before its XACK and before any checkpoint: its batch replaced the view.
    store = Store(logs_dir)
    store.open()
    reply = client.xreadgroup("task-logger", "died", {"task_events": ">"}, count=10)
    batch = store.begin()
    for raw_id, fields in reply[0][1]:
        event = decode(raw_id, fields, max_entry_bytes=1 << 20)
        batch.apply(event, project(event, batch.view(event)))
    batch.commit()
    store.close()
    client.xgroup_delconsumer("task_events", "task-logger", "died")  # its entries come back as a replay
    client.xgroup_setid("task_events", "task-logger", "0")

    consume(redis_url, logs_dir, None)  # every entry a duplicate
    publisher.event("task:output", task_id=RUNNING, data={"content": "later"})
    consume(redis_url, logs_dir, None)

    assert verify_logs_dir(logs_dir).ok, [p.text() for p in verify_logs_dir(logs_dir).problems]


def test_view_edited_before_a_reseal_is_not_laundered_by_it(
    redis_url: str, publisher: Publisher, logs_dir: Path
) -> None:
    publish_tasks(publisher)
    consume(redis_url, logs_dir, None)
    final = logs_dir / DONE / FINAL
    final.write_text(final.read_text().replace('"completed"', '"cancelled"'))

    publisher.event("task:response_posted", task_id=DONE, data={"method": "comment"})  # reseals over the edit
    consume(redis_url, logs_dir, None)

    assert len(lines_of(logs_dir / DONE / DIGESTS)) == 2
    assert found(verify_logs_dir(logs_dir)) == {(f"{DONE}/{FINAL}", None, CHANGED)}  # the checkpoint still knows
