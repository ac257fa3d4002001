"""Errors with gRPC-style status codes, shared by every protocol layer.

The core raises ServingError; the gRPC layer passes the code through and the
REST layer maps it to an HTTP status, so both protocols report the same thing.
"""

from __future__ import annotations

import enum


class InvalidInput(ValueError):
    """Raised by a Python model's code (model.py) for a request it can't take: answered
    INVALID_ARGUMENT / 400 with this message. Exported as ``pyserving.InvalidInput``."""


class Code(enum.IntEnum):
    """gRPC status codes (the same numbers TensorFlow's error codes use)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# TF Serving's http_rest_api_handler mapping.
_HTTP_STATUS = {
    Code.OK: 200,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.NOT_FOUND: 404,
    Code.DEADLINE_EXCEEDED: 504,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNAVAILABLE: 503,
    Code.UNIMPLEMENTED: 501,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
}


def http_status(code: Code) -> int:
    return _HTTP_STATUS.get(code, 500)


class ServingError(Exception):
    """A request or load failure with the status code clients will see."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message
        self.retry_after: int | None = None  # seconds, for a refusal the client should retry
        self.final = False  # a load retrying can't change: the manager ends it at once
        self.final_reason = ""  # why, for the log: "the server's flags refuse it"

    def __str__(self) -> str:
        return self.message

    @classmethod
    def invalid_argument(cls, message: str) -> "ServingError":
        return cls(Code.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> "ServingError":
        return cls(Code.NOT_FOUND, message)

    @classmethod
    def failed_precondition(cls, message: str) -> "ServingError":
        return cls(Code.FAILED_PRECONDITION, message)

    @classmethod
    def refused_by_policy(cls, message: str) -> "ServingError":
        """A load the server's flags refuse: final at once, never retried (the manager ends it)."""
        return cls.cannot_load(message, "the server's flags refuse it")

    @classmethod
    def cannot_load(cls, message: str, why: str) -> "ServingError":
        """A load that can't succeed however often it is tried (``why``): final at once."""
        error = cls(Code.FAILED_PRECONDITION, message)
        error.final, error.final_reason = True, why
        return error

    @classmethod
    def unavailable(cls, message: str) -> "ServingError":
        return cls(Code.UNAVAILABLE, message)
