"""Route stdlib `logging` (and so third-party libraries) through labtel: `capture_stdlib()`."""

from __future__ import annotations

import logging

from labtel.sdk.logger import emit
from labtel.sdk.pipeline import on_export_thread

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _severity(levelno: int) -> int:
    """stdlib levels onto OTel severity numbers: DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21."""
    if levelno >= logging.CRITICAL:
        return 21
    if levelno >= logging.ERROR:
        return 17
    if levelno >= logging.WARNING:
        return 13
    if levelno >= logging.INFO:
        return 9
    if levelno >= logging.DEBUG:
        return 5
    return 1


class LabtelHandler(logging.Handler):
    """A logging handler that sends records as labtel events (`extra=` fields become attributes)."""

    def emit(self, record: logging.LogRecord) -> None:
        if on_export_thread() or record.name.startswith("labtel.sdk"):
            return  # the SDK's own diagnostics must not feed back into it
        try:
            fields = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
            fields["code.function.name"] = record.funcName
            fields["code.file.path"] = record.pathname
            fields["code.line.number"] = record.lineno
            emit(
                record.name or "root",
                _severity(record.levelno),
                record.getMessage(),
                fields,
                time_ns=int(record.created * 1e9),
                exc_info=record.exc_info,
            )
        except Exception:
            self.handleError(record)


def capture_stdlib(level: int | str = logging.INFO, logger: str | None = None) -> LabtelHandler:
    """Send stdlib logging at `level` and above (from `logger`, default: the root) through labtel."""
    target = logging.getLogger(logger)
    for handler in target.handlers:
        if isinstance(handler, LabtelHandler):
            return handler
    handler = LabtelHandler(level)
    target.addHandler(handler)
    if target.level == logging.NOTSET or target.level > handler.level:
        target.setLevel(handler.level)
    return handler
