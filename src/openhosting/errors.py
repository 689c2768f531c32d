"""The platform's error types: one per X-Elastic-Error kind of the API (docs/api.md §3).

Raised at the place that knows the cause; the HTTP edge turns them into responses.
"""


class ApiError(Exception):
    """An error the API reports to the client with a status and an X-Elastic-Error type."""

    kind = "system"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ApiError):
    kind, status = "usage", 400


class AuthError(ApiError):
    kind, status = "auth", 401


class BillingError(ApiError):
    kind, status = "billing", 402


class MissingError(ApiError):
    kind, status = "missing", 404


class MethodError(ApiError):
    kind, status = "method", 405


class BusyError(ApiError):
    kind, status = "busy", 409


class FailedError(ApiError):
    kind, status = "failed", 500


class UnavailableError(FailedError):
    """`failed`, as 503: what the command needs is away for now (a host gone offline), not
    broken; the same command may succeed once it is back."""

    status = 503


class SystemError_(ApiError):
    kind, status = "system", 500


class FullError(ApiError):
    kind, status = "full", 507


# The class of each X-Elastic-Error kind, as a client reading an answer's header finds it.
ERROR_TYPES: dict[str, type[ApiError]] = {
    cls.kind: cls
    for cls in (
        UsageError,
        AuthError,
        BillingError,
        MissingError,
        MethodError,
        BusyError,
        FailedError,
        SystemError_,
        FullError,
    )
}
