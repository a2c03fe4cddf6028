"""Rejected requests as one log line each: no traceback, no client-controlled newlines, at most a few a second.

BentoML logs every 400 as an ERROR with the full traceback (~3 KB; 59k bad requests made a 179 MB log), and the
traceback carries client-chosen field names raw: a field name holding a newline forged a `[CRITICAL]` line in
the server log. `OneLineRejections`, a filter on BentoML's request logger, turns a rejected request (a pydantic
`ValidationError`, or a BentoML error with a 4xx code) into one WARNING line with the path, the error count and
the escaped field locations, and lets through at most `per_second` of them (a count of the rest follows).
Server errors (5xx) keep their traceback: those are ours to fix.
"""

from __future__ import annotations

import logging
import time

BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


def _escaped(text: object, limit: int = 80) -> str:
    """`text` with every control character escaped (so it cannot start a new log line), cut to `limit`."""
    shown = str(text)[:limit]
    return shown.encode("unicode_escape").decode("ascii")


class OneLineRejections(logging.Filter):
    """Rewrite client-error records of BentoML's request logger; rate-limit them."""

    def __init__(self, per_second: float = 5.0, clock=time.monotonic) -> None:  # noqa: ANN001
        super().__init__()
        self.per_second = float(per_second)
        self.clock = clock
        self._window = 0.0
        self._in_window = 0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        locations = _client_error_locations(error)
        if locations is None:
            return True  # not a client error: keep it as it is
        now = self.clock()
        if now - self._window >= 1.0:
            self._window, self._in_window = now, 0
        self._in_window += 1
        if self._in_window > self.per_second:
            self._suppressed += 1
            return False
        path = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        note = f" ({self._suppressed} more rejected requests not logged)" if self._suppressed else ""
        self._suppressed = 0
        record.msg = "rejected request on %s: %s%s"
        record.args = (_escaped(path), "; ".join(locations) or _escaped(type(error).__name__), note)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _client_error_locations(error: BaseException | None) -> list[str] | None:
    """Escaped 'location: error type' items of a client error; None when `error` is not a client error."""
    if error is None:
        return None
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        items = error.errors(include_input=False, include_context=False)
        shown = [
            f"{_escaped('.'.join(str(part) for part in item.get('loc', ())))}: {_escaped(item.get('type', ''), 40)}"
            for item in items[:5]
        ]
        if len(items) > 5:
            shown.append(f"{len(items) - 5} more")
        return shown
    code = getattr(getattr(error, "error_code", None), "value", None)
    if isinstance(code, int) and 400 <= code < 500:
        return [f"{code} {_escaped(type(error).__name__)}"]
    return None


def install() -> None:
    """Add the filter to BentoML's request logger in this (worker) process, once."""
    target = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, OneLineRejections) for f in target.filters):
        target.addFilter(OneLineRejections())
