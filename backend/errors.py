"""The backend's exceptions: one base, and the kinds an HTTP client is told about."""

from __future__ import annotations


class BackendError(Exception):
    """Base of every error the backend raises on purpose."""

    status = 500
    code = "internal"


class ConfigError(BackendError):
    """A configuration file or environment override that cannot be used (names the key)."""


class InputError(BackendError):
    """A request field that is missing or invalid; ``field`` names it."""

    status = 400
    code = "invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Unauthorized(BackendError):
    status = 401
    code = "unauthorized"


class Forbidden(BackendError):
    status = 403
    code = "forbidden"


class NotFound(BackendError):
    status = 404
    code = "not_found"


class Conflict(BackendError):
    status = 409
    code = "conflict"


class Unavailable(BackendError):
    """A cabinet or service that cannot be reached now (the client may retry)."""

    status = 503
    code = "unavailable"
