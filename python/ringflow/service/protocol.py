"""Request/response over TCP: one JSON header and one binary payload per message.

A frame is: 4-byte big-endian header length, the UTF-8 JSON header, an
8-byte big-endian payload length, the payload.  A request's header has
`op` and, where the master wants one, `token` (RINGFLOW_SERVICE_TOKEN);
a reply's header has `ok` and, on failure, `error` (a sentence naming
what was wrong).  One request per connection keeps the server stateless:
a client never depends on a connection surviving a master restart.
Every socket operation has a timeout.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import socket
import socketserver
import struct
import threading
import time
from typing import Callable

MAX_HEADER = 1 << 20
MAX_PAYLOAD = 1 << 34
DEFAULT_TIMEOUT_S = 60.0
TOKEN_ENV = "RINGFLOW_SERVICE_TOKEN"
MASTER_ENV = "RINGFLOW_MASTER"


class ServiceError(RuntimeError):
    """The master refused a request or could not be reached; the message says why."""


class Unreachable(ServiceError):
    """The master could not be reached (or the connection broke): worth retrying."""


def parse_address(text: str | None) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); None reads RINGFLOW_MASTER."""
    text = text or os.environ.get(MASTER_ENV, "")
    if not text:
        raise ValueError(f"no master address: pass --master HOST:PORT or set {MASTER_ENV}")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"master address {text!r} must look like HOST:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    """n bytes, received in place (no second copy of a large payload)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 22))
        if k == 0:
            raise ConnectionError(f"peer closed the connection after {got} of {n} bytes")
        got += k
    return buf


def send_frame(sock: socket.socket, header: dict, payload: bytes | memoryview = b"") -> None:
    h = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(h)) + h + struct.pack(">Q", len(payload)))
    if len(payload):
        sock.sendall(payload)


def recv_frame(sock: socket.socket) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack(">I", _recv_exact(sock, 4))
    if hlen > MAX_HEADER:
        raise ValueError(f"message header of {hlen} bytes is over the {MAX_HEADER}-byte limit")
    header = json.loads(_recv_exact(sock, hlen))
    if not isinstance(header, dict):
        raise ValueError("message header is not a JSON object")
    (plen,) = struct.unpack(">Q", _recv_exact(sock, 8))
    if plen > MAX_PAYLOAD:
        raise ValueError(f"message payload of {plen} bytes is over the limit")
    return header, _recv_exact(sock, plen) if plen else b""


def call(address: tuple[str, int], op: str, payload: bytes = b"", *,
         timeout: float = DEFAULT_TIMEOUT_S, **fields) -> tuple[dict, bytes]:
    """Sends one request; returns the reply's (header, payload) or raises ServiceError."""
    header = {"op": op, **fields}
    token = os.environ.get(TOKEN_ENV)
    if token:
        header["token"] = token
    try:
        with socket.create_connection(address, timeout=timeout) as s:
            s.settimeout(timeout)
            send_frame(s, header, payload)
            reply, data = recv_frame(s)
    except OSError as e:
        raise Unreachable(f"master {address[0]}:{address[1]} ({op}): {e}") from None
    except ValueError as e:   # a reply that is not a frame: retrying would not mend it
        raise ServiceError(f"master {address[0]}:{address[1]} ({op}): {e}") from None
    if not reply.get("ok"):
        raise ServiceError(reply.get("error") or f"master refused {op!r} without a reason")
    return reply, data


def call_retrying(address, op: str, payload: bytes = b"", *, within_s: float, **fields):
    """`call`, retried while the master is unreachable (restarting) for up to `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call(address, op, payload, **fields)
        except Unreachable:   # a refusal by the master (a missing token, say) is final
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


Handler = Callable[[dict, bytes, str], tuple[dict, bytes]]


class Server:
    """Serves `handle(header, payload, peer_host) -> (reply header, reply payload)` on a thread per
    connection.  Bound beyond loopback it refuses to start without a token; with a token it
    rejects every request that does not carry it (compared in constant time)."""

    def __init__(self, handle: Handler, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        token = os.environ.get(TOKEN_ENV, "") if token is None else token
        if not is_loopback(host) and not token:
            raise ValueError(f"binding {host} (beyond loopback) needs a shared secret: "
                             f"set {TOKEN_ENV} for the master and every client and worker")
        self.token = token.encode()
        outer = self

        class _Conn(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(timeout)
                try:
                    header, payload = recv_frame(self.request)
                except (OSError, ValueError) as e:
                    outer._reply(self.request, {"ok": False, "error": f"malformed request: {e}"})
                    return
                outer._reply(self.request, *outer._serve(header, payload, self.client_address[0]))

        class _TCP(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = _TCP((host, port), _Conn)
        self.handle = handle
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="service-server",
                                        daemon=True)

    def _serve(self, header: dict, payload: bytes, peer: str) -> tuple[dict, bytes]:
        if self.token:
            got = str(header.get("token", "")).encode()
            if not hmac.compare_digest(got, self.token):
                why = "without" if not got else "with a wrong"
                return {"ok": False, "error": f"request from {peer} {why} {TOKEN_ENV}: refused"}, b""
        try:
            reply, data = self.handle(header, payload, peer)
        except (ValueError, KeyError, TypeError, LookupError, OSError, ServiceError) as e:
            return {"ok": False, "error": str(e) if not isinstance(e, KeyError) else
                    f"missing or unknown {e}"}, b""
        return {"ok": True, **reply}, data

    @staticmethod
    def _reply(sock, header, payload=b""):
        try:
            send_frame(sock, header, payload)
        except OSError:
            pass  # the client left; nothing to tell it

    def start(self) -> "Server":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
