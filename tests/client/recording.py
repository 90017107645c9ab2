"""A tiny HTTP server on a raw socket that records the exact request bytes and plays back a canned answer."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP


@dataclass
class RawRequest:
    raw: bytes
    request_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def method(self) -> str:
        return self.request_line.split(" ")[0]

    @property
    def target(self) -> str:
        return self.request_line.split(" ")[1]

    def parts(self) -> list[Message]:
        """The body split by the standard library's email parser, as any AIAA server's parser would."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + self.body)
        assert message.is_multipart(), "request body is not multipart"
        return list(message.get_payload())  # type: ignore[arg-type]


def part_name(part: Message) -> str | None:
    return part.get_param("name", header="content-disposition")  # type: ignore[return-value]


def http_response(body: bytes, content_type: str, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode() + body


def json_response(value: object, status: str = "200 OK") -> bytes:
    return http_response(json.dumps(value).encode(), "application/json", status)


def multipart_response(params: dict[str, object], image: bytes, boundary: str = "----------lImIt_of_THE_fIle_eW_$",
                       filename: str = "result.nii.gz") -> bytes:
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return http_response(body, f'multipart/form-data; boundary="{boundary}"')


@dataclass
class RecordingServer:
    """Answers each connection with the next canned response (the last one repeats); `answer=False` never replies."""

    responses: list[bytes] = field(default_factory=list)
    answer: bool = True
    read_body: bool = True  # False: answer right after the headers, like a server refusing an upload early
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server-side context
    requests: list[RawRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)  # accept() wakes up regularly to notice close()
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):  # the client refused our certificate
                    conn.close()
                    continue
            with conn:
                self.requests.append(self._read(conn, self.read_body))
                if not self.answer:
                    self._stop.wait(5)
                    continue
                index = min(len(self.requests) - 1, len(self.responses) - 1)
                conn.sendall(self.responses[index])

    @staticmethod
    def _read(conn: socket.socket, read_body: bool = True) -> RawRequest:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while read_body and len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return RawRequest(raw=head + b"\r\n\r\n" + body, request_line=lines[0], headers=headers, body=body)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=10)
