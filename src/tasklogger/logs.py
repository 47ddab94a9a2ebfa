"""structlog set-up: human-readable lines on a terminal, JSON lines for log shippers."""

from __future__ import annotations

import logging
import sys
from typing import Any

#: The set-up ``configure_on_first_use`` defers: (level, format).
_deferred: tuple[str, str] | None = None


def configure(level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog and stdlib logging (uvicorn's too) to stderr at ``level``."""
    import structlog

    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_on_first_use(level: str = "INFO", fmt: str = "console") -> None:
    """``configure``, done by the first message of a ``get_logger`` logger: a process that may never log (the
    writer child) starts without importing structlog (about 90 ms of its start-up)."""
    global _deferred
    _deferred = (level, fmt)


class LazyLogger:
    """A structlog logger that imports structlog when it logs its first message."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, method: str) -> Any:
        if self._logger is None:
            global _deferred
            import structlog

            if _deferred is not None:
                configure(*_deferred)
                _deferred = None
            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, method)


def get_logger(name: str) -> LazyLogger:
    """A logger for the modules a child process imports (structlog only when a message is logged)."""
    return LazyLogger(name)
