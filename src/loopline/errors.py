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
