"""Response models of the HTTP API: they document the answers in the OpenAPI schema (docs/api.md has prose)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """Every 4xx/5xx answer of the API."""

    detail: Any = Field(description="what was wrong (a string; validation errors give a list)")


class EventCounts(BaseModel):
    """Records of a task per JSONL file."""

    webhook_flow: int
    agent_output: int
    user_inputs: int
    total: int


class Integrity(BaseModel):
    """The audit state of a task (null until the audit trail reports it)."""

    sealed: bool
    digest: str | None = None
    sealed_at: str | None = None
    digests: int = Field(default=0, description="digests written for the task; more than one: resealed")
    damaged: bool = Field(default=False, description="the last digest line does not parse (run tasklogger verify)")


class TaskSummary(BaseModel):
    """One task as the index (or, for GET /tasks/{id} of a task not indexed yet, its files) knows it."""

    task_id: str
    source: str | None
    agent_type: str | None
    user_id: str | None
    machine_id: str | None
    status: Literal["running", "completed", "failed"]
    created_at: str | None = Field(description="ISO 8601 UTC")
    updated_at: str | None = Field(description="time of the latest record, ISO 8601 UTC")
    finished_at: str | None = Field(description="ISO 8601 UTC")
    duration_seconds: float | None
    cost_usd: float | None = Field(description="final, or the latest task:metrics figure while running")
    input_tokens: int | None
    output_tokens: int | None
    exit_code: int | None
    error: str | None
    message: str | None = Field(description="the input message, first 300 characters")
    events: EventCounts
    first_entry_id: str | None
    last_entry_id: str | None
    integrity: Integrity | None = None


class TaskList(BaseModel):
    """One page of GET /tasks."""

    tasks: list[TaskSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class CompatLogs(BaseModel):
    """GET /tasks/{id}/logs: every file of the task under the keys existing readers expect (streamed)."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    webhook_flow: list[dict[str, Any]] = []
    agent_output: list[dict[str, Any]] = []
    user_inputs: list[dict[str, Any]] = []
    final_result: dict[str, Any] | None = None


class RecordPage(BaseModel):
    """GET /tasks/{id}/logs?file=...: one page of a JSONL file."""

    records: list[dict[str, Any]] = Field(description="JSONL records as on disk (docs/records.md)")
    next_after: str | None = Field(description="pass as ?after= for the next page; null on the last page")


class DeadLetterPage(BaseModel):
    """GET /dead-letters: one page of dead-lettered entries."""

    dead_letters: list[dict[str, Any]] = Field(description="records with id, reason, detail, fields, ...")
    next_after: str | None


class Liveness(BaseModel):
    """GET /livez."""

    status: Literal["ok"]


class Health(BaseModel):
    """GET /health (200 or 503)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "unavailable"]
    version: str
    redis: Literal["ok", "unreachable"]
    reasons: list[str] | None = None


class MetricsJson(BaseModel):
    """GET /metrics as JSON (the default); figures are null when not known (Redis unreachable, no consumer)."""

    model_config = ConfigDict(extra="allow")

    queue_depth: int | None
    queue_lag: int | None
    pending: int | None
    tasks_processed: int | None
