"""The one error type of the HTTP API: a status, a stable machine-readable code and a sentence for people.

Every error the server sends is JSON ``{"error": CODE, "message": TEXT}`` (plus ``"status"``), whatever raised
it: a bad upload, a missing token, a library ``ValueError``, an unexpected bug (then ``internal``, logged with
its traceback, never sent)."""
from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """Raised anywhere in a request; the app turns it into a JSON response with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, "status": self.status}
