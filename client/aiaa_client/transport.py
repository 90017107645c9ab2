"""HTTP over the standard library's http.client: one fresh connection per call, like the AIAA clients.

Requests always carry Content-Length and `accept-encoding: identity`; bodies are streamed in chunks so that
progress can be reported and large volumes never have to sit in memory twice.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiaa_client.errors import AIAAConnectionError, AIAATimeoutError, error_for_status

# progress(direction, bytes_done, bytes_total_or_None); direction is "upload" or "download".
ProgressCallback = Callable[[str, int, "int | None"], None]

USER_AGENT = "aiaa-client/0.1"
READ_CHUNK = 1 << 20


@dataclass
class HTTPResponse:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass
class RequestBody:
    content_type: str
    length: int
    chunks: Iterable[bytes]


class Transport:
    def __init__(
        self,
        base_url: str,
        timeout: float | None = 300.0,
        verify_tls: bool = True,
        progress: ProgressCallback | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url if "://" in base_url else "http://" + base_url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parsed.scheme!r} in {base_url!r}")
        if not parsed.hostname:
            raise ValueError(f"no host in server URL {base_url!r}")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port
        self.prefix = parsed.path.rstrip("/")
        self.timeout = timeout
        self.verify_tls = verify_tls
        self.progress = progress

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{host}{port}{self.prefix}"

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            context = ssl.create_default_context()
            if not self.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def target(self, path: str, query: dict[str, object] | None = None) -> str:
        pairs = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        suffix = "?" + urllib.parse.urlencode(pairs) if pairs else ""
        return self.prefix + path + suffix

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, object] | None = None,
        body: RequestBody | None = None,
        headers: dict[str, str] | None = None,
        what: str | None = None,
    ) -> HTTPResponse:
        """Send one request; non-2xx answers raise the matching AIAAError subclass."""
        what = what or f"{method} {path}"
        target = self.target(path, query)
        connection = self._connection()
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            all_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Connection": "close",
                           **(headers or {})}
            if body is not None:
                all_headers["Content-Type"] = body.content_type
                all_headers["Content-Length"] = str(body.length)
            elif method in ("POST", "PUT"):
                all_headers["Content-Length"] = "0"
            for name, value in all_headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            if body is not None:
                self._send_body(connection, body)
            response = connection.getresponse()
            data = self._read_body(response)
        except TimeoutError as exc:
            raise AIAATimeoutError(f"{what}: no answer from {self.base_url} within {self.timeout} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise AIAAConnectionError(f"{what}: cannot talk to {self.base_url}: {exc}") from exc
        finally:
            connection.close()
        result = HTTPResponse(
            status=response.status,
            reason=response.reason,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=data,
        )
        if not 200 <= result.status < 300:
            raise error_for_status(result.status, result.reason, result.body, what)
        return result

    def _send_body(self, connection: http.client.HTTPConnection, body: RequestBody) -> None:
        sent = 0
        for chunk in body.chunks:
            try:
                connection.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                # The server may answer (401, 413, 404…) and close before reading a large body; the
                # caller still reads that answer, which says more than "broken pipe".
                return
            sent += len(chunk)
            if self.progress:
                self.progress("upload", sent, body.length)

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        length_header = response.getheader("content-length")
        total = int(length_header) if length_header and length_header.isdigit() else None
        pieces: list[bytes] = []
        done = 0
        while chunk := response.read(READ_CHUNK):
            pieces.append(chunk)
            done += len(chunk)
            if self.progress:
                self.progress("download", done, total)
        return b"".join(pieces)


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
