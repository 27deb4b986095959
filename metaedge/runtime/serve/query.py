"""Query parameters of the image endpoints (predict, enroll), read by hand from the request and described once
for both the reading and the OpenAPI document.

Why not FastAPI's ``Query(...)`` parameters: on these endpoints - the ones a camera calls many times a second -
FastAPI 0.16x's per-request parameter and dependency solving cost more than the work itself (measured on one
core: predict of a 28x28 PNG through the app 0.96 ms with five ``Query`` parameters and a ``Depends`` role
check, 0.60 ms reading the same parameters here; decoding + network were 0.42 ms). Errors keep the app's
format: 422 ``bad_request`` naming ``query.<name>``, as FastAPI's validation errors do.
"""
from __future__ import annotations

from dataclasses import dataclass

from metaedge.runtime.serve.errors import ApiError

__all__ = ["QueryParam", "read_query", "openapi_parameters"]


@dataclass(frozen=True)
class QueryParam:
    """One optional query parameter: ``kind`` int, float or str; ``repeated``: every occurrence, as a list
    (None when absent); ``minimum``/``maximum``: inclusive bounds of a number."""
    name: str
    kind: type
    description: str
    default: object = None
    minimum: float | None = None
    maximum: float | None = None
    repeated: bool = False

    def parse(self, text: str):
        if self.kind is str:
            return text
        try:
            value = self.kind(text)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise ApiError(422, "bad_request", f"query.{self.name}: expected {what}, got {text!r}") from None
        if self.kind is float and value != value:  # NaN passes every comparison below
            raise ApiError(422, "bad_request", f"query.{self.name}: expected a number, got {text!r}")
        if self.minimum is not None and value < self.minimum:
            raise ApiError(422, "bad_request", f"query.{self.name}: expected >= {self.minimum:g}, got {text}")
        if self.maximum is not None and value > self.maximum:
            raise ApiError(422, "bad_request", f"query.{self.name}: expected <= {self.maximum:g}, got {text}")
        return value

    def openapi(self) -> dict:
        schema: dict = {"type": {int: "integer", float: "number", str: "string"}[self.kind]}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        if self.repeated:
            schema = {"type": "array", "items": schema}
        return {"name": self.name, "in": "query", "required": False, "description": self.description,
                "schema": schema}


def read_query(request, params: tuple[QueryParam, ...]) -> dict:
    """``{name: value}`` for ``params`` from the request's query string (defaults where absent)."""
    query = request.query_params
    out = {}
    for p in params:
        if p.repeated:
            values = query.getlist(p.name)
            out[p.name] = [p.parse(v) for v in values] if values else None
        else:
            text = query.get(p.name)
            out[p.name] = p.default if text is None else p.parse(text)
    return out


def openapi_parameters(params: tuple[QueryParam, ...]) -> list[dict]:
    return [p.openapi() for p in params]
