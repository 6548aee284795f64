"""Errors a user can act on: each names the field, file or value at fault."""


class LooplineError(Exception):
    """Base class for errors reported to users without a traceback."""


class ConfigError(LooplineError):
    """params.yaml or a -P override is invalid."""


class SourceError(LooplineError):
    """An ingest source is missing, unreadable or of the wrong shape."""


class ValidationFailed(LooplineError):
    """Too many rows broke the data contract; the snapshot was not updated."""


class ParityError(LooplineError):
    """The ONNX export does not reproduce the PyTorch model; nothing was published."""


class RegistryError(LooplineError):
    """A registry operation was refused (unknown model or version, bad alias)."""


class RegistryUnreachable(RegistryError):
    """The registry did not answer (a server down, a network away): nothing was changed."""


class ChampionMoved(RegistryError):
    """A champion move was refused because another landed since the operator looked."""


# Errors of the world outside, worth a retry: the network, a database that is briefly away.
# A missing file or a refused permission stays missing on a retry: those fail at once.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_NAMES = {
    "OperationalError",  # SQLAlchemy / DB-API: connection refused, server closed, locked
    "InterfaceError",
    "TimeoutException",  # httpx
    "ConnectError",
    "ReadTimeout",
    "ConnectionError",  # requests
}


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or any error it was raised from, is an I/O failure worth retrying."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _PERMANENT_OS_ERRORS):
            return False
        if isinstance(current, OSError | TimeoutError):
            return True
        if type(current).__name__ in _TRANSIENT_NAMES:
            return True
        current = current.__cause__ or current.__context__
    return False
