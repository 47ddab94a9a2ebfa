"""HTTP side of the audit trail: ``GET /tasks/{id}/export`` and the integrity state of a task summary."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from .. import records
from ..errors import UnsafeTaskId
from ..fsio import exists_at
from ..projector import FINAL_RESULT
from ..reader import TaskDir, TaskNotFound
from .bundle import export_bundle
from .chain import last_line
from .digests import DIGESTS
from .signing import KeyFileError, load_signer

if TYPE_CHECKING:
    from ..api import Runtime


def integrity_state(logs_dir: Path, task_id: str) -> dict[str, Any] | None:
    """``{"sealed", "digest", "sealed_at", "digests"}`` of a task, from the last line of its digest file only.

    ``sealed`` is true when the task has ended and has a digest; ``digest`` is the last digest's chain hash and
    ``digests`` how many there are (more than one: events arrived after the first seal and were resealed).
    None for an unsafe id or a task without a directory. It does not verify anything: ``tasklogger verify`` does.
    """
    try:
        with TaskDir(logs_dir, task_id) as task:
            line = last_line(task.fd, DIGESTS)
            ended = exists_at(task.fd, FINAL_RESULT)
    except (UnsafeTaskId, TaskNotFound):
        return None
    if line is None:
        return {"sealed": False, "digest": None, "sealed_at": None, "digests": 0}
    try:
        record = records.parse_line(line)
    except records.RecordError:
        return {"sealed": False, "digest": None, "sealed_at": None, "digests": 0, "damaged": True}
    sealed_at = record.body.get("sealed_at")
    return {
        "sealed": ended,
        "digest": record.hash.hex(),
        "sealed_at": sealed_at if isinstance(sealed_at, str) else None,
        "digests": record.seq,
    }


def router(runtime: Runtime) -> APIRouter:
    """The export endpoint over ``runtime``'s logs directory."""
    api = APIRouter()
    settings = runtime.settings

    @api.get("/tasks/{task_id}/export")
    def export(task_id: str) -> Response:
        """The task's evidence bundle (.tar.gz): files, digests, covering checkpoints, public key, manifest."""
        public_pem = None
        if settings.signing_key is not None:
            try:
                public_pem = load_signer(settings.signing_key).public_pem()
            except KeyFileError as exc:
                raise HTTPException(status_code=500, detail=str(exc)) from None
        try:
            data = export_bundle(settings.logs_dir, task_id, public_pem)
        except UnsafeTaskId as exc:
            raise HTTPException(status_code=400, detail=exc.detail) from None
        except TaskNotFound:
            raise HTTPException(status_code=404, detail=f"no task {task_id!r}") from None
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", task_id)  # a header value, whatever the task id holds
        headers = {"Content-Disposition": f'attachment; filename="{safe}.evidence.tar.gz"'}
        return Response(data, media_type="application/gzip", headers=headers)

    return api
