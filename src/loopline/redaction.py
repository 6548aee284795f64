"""One redaction for every message, log line, banner and endpoint: no password leaves.

`redact(text)` masks the password of every URL inside any text (`scheme://user:pw@host` →
`scheme://user:***@host`), `password=`-style query parameters, and any value registered as
a secret (`remember_secret`, e.g. the service's token). `redact_logs()` applies it to every
log record a process creates, whichever library logs it (MLflow and SQLAlchemy put URIs in
their errors), tracebacks included.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

MASK = "***"

# scheme://user:password@ — the password stops at the last '@' before the host: a password
# may hold '@' unencoded (drivers accept it), a host never does.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@?#'\"]*:)(?P<password>[^\s'\"]*?)(?=@[^\s@'\"]*(?:[\s'\"]|$))"
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;\s](?:password|passwd|pwd|token|secret|access_token|api_key)=)(?P<value>[^&\s'\"]+)",
    re.IGNORECASE,
)
_known: set[str] = set()
# An absolute filesystem path (two segments or more: `/predict` is an endpoint, not a path).
_PATH = re.compile(r"(?:\b[A-Za-z]:)?(?:[/\\][\w.~\-]+){2,}[/\\]?")
PATH_MASK = "<path>"


def remember_secret(value: str | None) -> None:
    """Mask `value` wherever it appears from now on (values under 4 characters are too
    likely to hide ordinary text and are not registered)."""
    if value and len(value) >= 4:
        _known.add(value)


def remember_url_secrets(url: str | None) -> None:
    """Register the password of `url` (as written and decoded), so it stays masked even
    where a library prints it outside a URL."""
    if not url or "://" not in url:
        return
    match = _URL_PASSWORD.search(url)
    if match and match["password"]:
        remember_secret(match["password"])
        remember_secret(unquote(match["password"]))


def redact(text: Any) -> str:
    """`text` (made a string) with every password it holds masked."""
    text = str(text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK if m["password"] else m[0], text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda m: m["head"] + MASK, text)
    for secret in _known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_data(value: Any) -> Any:
    """A JSON-ready structure with every string in it redacted (keys kept)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def without_paths(value: Any) -> Any:
    """A JSON-ready structure with every filesystem path in its strings masked (what an
    unauthenticated client may see of the service's state)."""
    if isinstance(value, str):
        return _PATH.sub(PATH_MASK, value)
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_paths(v) for v in value]
    return value


_installed = False
_quiet: list = []  # checks of records kept without their traceback (see `quiet_records`)


def quiet_records(check) -> None:
    """Log records `check(record)` says are routine (a client's bad request, which a filter
    counts and drops) keep no traceback: formatting one costs more than answering the
    request, and a flood of them would be paid for by every other client."""
    if check not in _quiet:
        _quiet.append(check)


def redact_logs() -> None:
    """Redact every log record of this process as it is made: its message, its arguments
    and its traceback. Installed once; records below a logger's level cost nothing."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging to report
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            if any(check(record) for check in _quiet):
                return record
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(redacting_factory)
    _installed = True
