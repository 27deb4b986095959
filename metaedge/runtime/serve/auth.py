"""Who is asking, and may they: bearer tokens, roles, the per-token rate limit - as FastAPI dependencies.

``Authorization: Bearer <token>`` on every request. Browsers cannot add headers to ``<img>`` and ``EventSource``
requests, so the live view's GET endpoints (``/v1/live/...``) also take ``?access_token=``; the server's access
log never prints query strings. Without a token store (loopback only, or ``--insecure``) every request is
``anonymous@ADDRESS`` with every role.

Browsers are kept from acting for other sites: a request that changes something and carries an ``Origin`` other
than the server's own is refused (403 ``cross_origin``; tokens already stop forms, which cannot send the
header, but a server without tokens has only this), and without tokens a request must name the server by a
loopback host (``localhost``, ``127.x``, ``[::1]``) - a page on another domain that resolves to 127.0.0.1
(DNS rebinding) is refused (403 ``bad_host``).
"""
from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request

from metaedge.runtime.serve.config import is_loopback
from metaedge.runtime.serve.errors import ApiError
from metaedge.runtime.serve.tokens import Principal

__all__ = ["need", "authorize", "client_address", "principal_of"]

_QUERY_TOKEN_PREFIX = "/v1/live"


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


def _presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "unauthorized", "Authorization: expected 'Bearer <token>'",
                           {"WWW-Authenticate": 'Bearer realm="metaedge"'})
        return value.strip()
    if request.method == "GET" and request.url.path.startswith(_QUERY_TOKEN_PREFIX):
        return request.query_params.get("access_token")
    return None


_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _check_browser_context(request: Request, auth: bool) -> None:
    host = request.headers.get("host", "")
    if request.method not in _SAFE_METHODS:
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != host.lower():
            raise ApiError(403, "cross_origin", f"a page of {origin} may not change this server")
    if not auth:
        name = urlsplit(f"//{host}").hostname or ""
        if not is_loopback(name) and request.app.state.server.config.insecure is False:
            raise ApiError(403, "bad_host", f"Host {host!r}: this server without tokens answers only to loopback "
                                            f"names (localhost, 127.0.0.1, [::1])")


def principal_of(request: Request) -> Principal:
    """The caller, authenticated and within its rate limit (401 / 403 / 429 otherwise)."""
    state = request.app.state.server
    _check_browser_context(request, state.auth_required)
    if not state.auth_required:
        principal = Principal(f"anonymous@{client_address(request)}", "admin")
    else:
        token = _presented_token(request)
        if not token:
            raise ApiError(401, "unauthorized", "this server needs a token: send 'Authorization: Bearer <token>' "
                                                "(make one with `metaedge token create NAME --role viewer`)",
                           {"WWW-Authenticate": 'Bearer realm="metaedge"'})
        principal = state.tokens.authenticate(token)
        if principal is None:
            raise ApiError(401, "unauthorized", "unknown or revoked token",
                           {"WWW-Authenticate": 'Bearer realm="metaedge", error="invalid_token"'})
    request.state.principal = principal
    if state.limiter is not None:
        wait = state.limiter.acquire(principal.name)
        if wait > 0:
            raise ApiError(429, "rate_limited", f"{principal.name}: more than {state.limiter.rate:g} requests/s "
                                                f"(burst {state.limiter.burst}); retry in {wait:.2f} s",
                           {"Retry-After": str(max(1, int(wait + 0.999)))})
    return principal


def authorize(request: Request, role: str, *, changes_gallery: bool = False) -> Principal:
    """The caller, who must hold ``role``; ``changes_gallery``: refused on a ``--read-only`` server. (What
    :func:`need` checks; the image endpoints call it themselves, see query.py.)"""
    principal = principal_of(request)
    if not principal.allows(role):
        raise ApiError(403, "forbidden", f"{principal.name} has the role {principal.role}; this needs {role}")
    if changes_gallery and request.app.state.server.config.read_only:
        raise ApiError(403, "read_only", "this server is read-only (--read-only): the gallery cannot be changed "
                                         "through it")
    return principal


def need(role: str, *, changes_gallery: bool = False):
    """A dependency: :func:`authorize` for ``role``."""
    async def dependency(request: Request) -> Principal:
        return authorize(request, role, changes_gallery=changes_gallery)
    dependency.__name__ = f"need_{role}"
    return dependency
