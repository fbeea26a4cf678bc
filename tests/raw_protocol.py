"""Clients that write the protocols themselves, as an attacker would: gRPC over raw HTTP/2 (the ``h2`` package,
whose HPACK encoder carries any bytes in a header) and HTTP/1.1 over a raw socket.

tritonclient and grpcio refuse to send malformed headers, so tests of what the server accepts must not rely
on them.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

GRPC_SERVICE = "/inference.GRPCInferenceService/"


@dataclass
class RawGrpcResult:
    """What the server answered one raw gRPC call: its gRPC status (None if the stream was reset or the
    connection dropped before a status), message, the response body and why it ended, if not by a status."""

    status: int | None = None
    message: str = ""
    body: bytes = b""
    ended: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0


def grpc_call(host: str, port: int, method: str, message: bytes = b"",
              headers: list[tuple[bytes, bytes]] = (), timeout: float = 10.0) -> RawGrpcResult:
    """Call ``method`` (e.g. ``RepositoryIndex``) of Triton's gRPC service with a serialized request
    ``message``, sending ``headers`` as given (any bytes), over a fresh HTTP/2 connection."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                       normalize_outbound_headers=False, validate_inbound_headers=False)
    connection = h2.connection.H2Connection(config=config)
    result = RawGrpcResult()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        request = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", (GRPC_SERVICE + method).encode()),
                   (b":authority", f"{host}:{port}".encode()), (b"content-type", b"application/grpc"),
                   (b"te", b"trailers"), *headers]
        connection.send_headers(stream, request)
        connection.send_data(stream, struct.pack(">?I", False, len(message)) + message, end_stream=True)
        sock.sendall(connection.data_to_send())
        done = False
        while not done:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionError) as err:
                result.ended.append(f"socket: {err!r}")
                break
            if not data:
                result.ended.append("connection closed")
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    result.body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    values = dict(event.headers)
                    if b"grpc-status" in values:
                        result.status = int(values[b"grpc-status"])
                        result.message = values.get(b"grpc-message", b"").decode(errors="replace")
                elif isinstance(event, h2.events.StreamReset):
                    result.ended.append(f"stream reset (error code {event.error_code})")
                    done = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    result.ended.append(f"connection terminated (error code {event.error_code})")
                    done = True
                if isinstance(event, h2.events.StreamEnded):
                    done = True
            outgoing = connection.data_to_send()
            if outgoing:
                sock.sendall(outgoing)
    return result


@dataclass
class RawHttpResult:
    status: int | None
    head: bytes
    body: bytes


def http_request(host: str, port: int, request: bytes, timeout: float = 10.0) -> RawHttpResult:
    """Send ``request`` (a whole HTTP/1.1 request, written by hand) and read the answer until the server
    closes the connection or the timeout passes; ``status`` is None when no status line came back."""
    chunks = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                answer = b"".join(chunks)
                head, _, body = answer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
        except (TimeoutError, ConnectionError):
            pass
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None
    return RawHttpResult(status, head, body)
