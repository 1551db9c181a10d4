"""Who may talk to the server: per-client tokens checked from call metadata, and TLS credentials.

The token check runs in a server interceptor, so a call with a missing or wrong token, or for a
client id the token does not belong to, is refused before its handler runs, i.e. before any
request body is parsed. Tokens never appear in logs or error messages.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

CLIENT_KEY = "x-fedpress-client"
AUTH_KEY = "authorization"

log = logging.getLogger("fedpress.grpc")


class AuthError(ValueError):
    """A token file or certificate is missing or malformed."""


def read_tokens(path: str | Path) -> dict[int, str]:
    """``ID TOKEN`` pairs, one per line (``#`` comments and blank lines allowed)."""
    p = Path(path)
    if not p.is_file():
        raise AuthError(f"token file {p} does not exist")
    out: dict[int, str] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AuthError(f"{p}:{n}: expected 'ID TOKEN' (an integer id and a token)")
        cid = int(parts[0])
        if cid in out:
            raise AuthError(f"{p}:{n}: client {cid} appears twice")
        out[cid] = parts[1]
    if not out:
        raise AuthError(f"token file {p} holds no 'ID TOKEN' line")
    return out


def read_token(path: str | Path) -> str:
    """One client's token (the file's only non-blank line)."""
    p = Path(path)
    if not p.is_file():
        raise AuthError(f"token file {p} does not exist")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) != 1 or len(lines[0].split()) != 1:
        raise AuthError(f"token file {p} must hold exactly one token on one line")
    return lines[0]


def write_tokens(directory: str | Path, client_ids: list[int]) -> tuple[Path, dict[int, Path]]:
    """Fresh random tokens: the server's ``tokens`` file and one ``token-<id>`` file per client,
    all readable by the owner only."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tokens = {c: secrets.token_urlsafe(24) for c in client_ids}
    server_file = d / "tokens"
    _write_private(server_file, "".join(f"{c} {t}\n" for c, t in tokens.items()))
    files = {}
    for c, t in tokens.items():
        files[c] = d / f"token-{c}"
        _write_private(files[c], t + "\n")
    return server_file, files


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def call_metadata(client_id: int, token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata a client attaches to every call."""
    md: list[tuple[str, str]] = [(CLIENT_KEY, str(client_id))]
    if token is not None:
        md.append((AUTH_KEY, f"Bearer {token}"))
    return tuple(md)


def client_id_of(metadata: Any) -> int:
    """The client id of a call whose metadata the interceptor already checked."""
    for k, v in metadata:
        if k == CLIENT_KEY:
            return int(v)
    raise AuthError("call without a client id")  # the interceptor refuses these first


@dataclass
class Verdict:
    ok: bool
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""


def check_call(metadata: Mapping[str, str], tokens: Mapping[int, str] | None, num_clients: int) -> Verdict:
    """Decide on one call from its metadata only."""
    raw = metadata.get(CLIENT_KEY)
    if raw is None or not raw.isdigit():
        return Verdict(False, grpc.StatusCode.UNAUTHENTICATED, "no client id in the call metadata")
    cid = int(raw)
    if cid >= num_clients:
        return Verdict(
            False, grpc.StatusCode.PERMISSION_DENIED,
            f"client id {cid} is not in this federation (ids 0..{num_clients - 1})",
        )
    if tokens is None:
        return Verdict(True)
    auth = metadata.get(AUTH_KEY, "")
    if not auth.startswith("Bearer "):
        return Verdict(False, grpc.StatusCode.UNAUTHENTICATED, f"client {cid}: no token given")
    given = auth[len("Bearer "):].encode()
    expected = tokens.get(cid)
    if expected is None:
        return Verdict(False, grpc.StatusCode.PERMISSION_DENIED, f"client {cid} has no token on this server")
    if not hmac.compare_digest(given, expected.encode()):
        owner = [c for c, t in tokens.items() if hmac.compare_digest(given, t.encode())]
        if owner:
            return Verdict(
                False, grpc.StatusCode.PERMISSION_DENIED, f"the token given does not belong to client {cid}"
            )
        return Verdict(False, grpc.StatusCode.UNAUTHENTICATED, f"client {cid}: wrong token")
    return Verdict(True)


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls by metadata before their handlers (and request parsing) run."""

    def __init__(
        self,
        tokens: Mapping[int, str] | None,
        num_clients: int,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.tokens = dict(tokens) if tokens is not None else None
        self.num_clients = num_clients
        self.on_refuse = on_refuse
        self.refused = 0

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        md = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}
        verdict = check_call(md, self.tokens, self.num_clients)
        handler = continuation(handler_call_details)
        if verdict.ok or handler is None:
            return handler
        self.refused += 1
        method = handler_call_details.method.rsplit("/", 1)[-1]
        log.warning("refused %s: %s", method, verdict.message)
        if self.on_refuse is not None:
            self.on_refuse(verdict.message)
        return _abort_handler(handler, verdict.code, f"fedpress server refused the call: {verdict.message}")


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise AuthError(f"{what} {p} does not exist")
    return p.read_bytes()


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS with the user's certificate; with ``client_ca``, clients must present a certificate
    signed by it (mutual TLS)."""
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    ca = _read(client_ca, "client CA certificate")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(
    ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS trusting ``ca``; ``cert``/``key`` present a client certificate (mutual TLS)."""
    if (cert is None) != (key is None):
        raise AuthError("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate"),
        private_key=_read(key, "TLS key"),
        certificate_chain=_read(cert, "TLS certificate"),
    )
