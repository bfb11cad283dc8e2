"""Domain errors. One interceptor maps them to gRPC status codes (see interceptors.py)."""

from __future__ import annotations


class AlignmeshError(Exception):
    """Base class; ``code`` names a ``grpc.StatusCode`` member."""

    code = "INTERNAL"


class InvalidArgument(AlignmeshError):
    """A request or config field is wrong. The message names the field and the fix."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(AlignmeshError):
    code = "NOT_FOUND"


class FailedPrecondition(AlignmeshError):
    code = "FAILED_PRECONDITION"


class Aborted(AlignmeshError):
    code = "ABORTED"


class ResourceExhausted(AlignmeshError):
    """A bound the operator set is reached; the message names the setting."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(AlignmeshError):
    """The caller's deadline passed before the work started (it is not started then)."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(AlignmeshError):
    code = "UNAVAILABLE"


class PermissionDenied(AlignmeshError):
    """A request asks for something the operator has not allowed; the message names the setting that allows it."""

    code = "PERMISSION_DENIED"


class ConfigError(AlignmeshError):
    """A config file is wrong; raised at load, before anything starts."""

    code = "INVALID_ARGUMENT"
