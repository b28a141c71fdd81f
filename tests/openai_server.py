"""A scriptable OpenAI-compatible provider for tests: a real HTTP server on 127.0.0.1 (random port)
answering ``POST /v1/chat/completions`` (and ``/chat/completions``) the way the test says, one scripted
response per call, and recording every request it received.

    with OpenAiServer() as server:
        server.script(status(429, retry_after="1"), reply("hello"))
        client = AiClient(config.load({}, ai_base_url=server.base_url + "/v1", ai_api_key="k", ...))
        assert client.reply([{"role": "user", "content": "hi"}]) == "hello"
        assert len(server.calls) == 2

A call with nothing left in the script gets ``server.default`` (a 500 naming the problem, unless a
test sets another, e.g. ``status(500)`` for a provider that stays down).

``OpenAiServer(tls=certificates(tmp_path))`` serves https with a certificate for 127.0.0.1 and
localhost from a test CA (``Certificates.client_context()`` trusts it; nothing else does).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import socket
import ssl
import time
from collections import deque
from pathlib import Path
from typing import Any

import gevent
from gevent.pywsgi import WSGIServer

from tests.waiting import wait_until

_PATHS = ("/v1/chat/completions", "/chat/completions")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 408: "Request Timeout",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclasses.dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    delay: float = 0.0  # seconds the server waits before answering
    chunked: bool = False  # sent in chunks (no Content-Length) instead of with a length


def completion(text: str, model: str = "test-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def reply(text: str, delay: float = 0.0) -> Response:
    return Response(200, json.dumps(completion(text)).encode(), delay=delay)


def status(
    code: int, retry_after: str | None = None, delay: float = 0.0, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps({"error": {"message": f"scripted {code}", "type": "test", "code": code}}).encode()
    extra = tuple((headers or {}).items()) + ((("Retry-After", retry_after),) if retry_after is not None else ())
    return Response(code, body, (("Content-Type", "application/json"),) + extra, delay=delay)


def raw(body: bytes, content_type: str = "application/json", code: int = 200, chunked: bool = False) -> Response:
    """Any body, e.g. malformed JSON or JSON without ``choices``."""
    return Response(code, body, (("Content-Type", content_type),), chunked=chunked)


@dataclasses.dataclass(frozen=True)
class Certificates:
    ca: bytes  # PEM of the test CA
    cert_file: str  # the server's certificate (for 127.0.0.1 and localhost), PEM
    key_file: str

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA (and checks certificates and host names)."""
        return ssl.create_default_context(cadata=self.ca.decode())

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def certificates(directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Certificates:
    """A test CA and a server certificate it signed for ``names`` (host names or IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wabot test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    alternative: list[x509.GeneralName] = []
    for name in names:
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternative.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Certificates(ca.public_bytes(serialization.Encoding.PEM), str(cert_file), str(key_file))


@dataclasses.dataclass
class Call:
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the decoded JSON body (None if it was not JSON)
    received_at: float  # time.monotonic() when the request arrived
    answered_at: float | None = None  # when the response was sent (None if the client went away first)
    peer: str = ""  # the client's address and port: calls on one connection share it


def _listener() -> socket.socket:
    """A listening socket whose connections send at once: pywsgi writes headers and body separately,
    and with Nagle on, the body waits for the client's delayed ACK (40 ms a request on Linux, where
    accepted sockets inherit TCP_NODELAY from the listener)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class OpenAiServer:
    def __init__(self, tls: Certificates | None = None) -> None:
        self.calls: list[Call] = []
        self.default = status(500)  # for calls beyond the script
        self.unscripted = 0  # calls answered with the default
        self._script: deque[Response] = deque()
        self._scheme = "https" if tls is not None else "http"
        extra = {"ssl_context": tls.server_context()} if tls is not None else {}
        self._server = WSGIServer(_listener(), self._app, log=None, error_log=None, **extra)

    def start(self) -> OpenAiServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def __enter__(self) -> OpenAiServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The server's root; as AI_BASE_URL it is called like DeepSeek (``/chat/completions``), and
        ``base_url + "/v1"`` like OpenAI (``/v1/chat/completions``)."""
        return f"{self._scheme}://127.0.0.1:{self._server.server_port}"

    def script(self, *responses: Response) -> None:
        """Queue responses for the next calls, in order."""
        self._script.extend(responses)

    def wait_for_calls(self, count: int, timeout: float = 5.0) -> list[Call]:
        """Block until at least ``count`` calls have arrived; AssertionError after ``timeout``."""
        wait_until(lambda: len(self.calls) >= count, timeout, f"{count} calls to arrive")
        return self.calls

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] != "POST" or path not in _PATHS:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": {"message": "not found"}}']
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        call = Call(path, headers, body, time.monotonic(),
                    peer=f"{environ.get('REMOTE_ADDR')}:{environ.get('REMOTE_PORT')}")
        self.calls.append(call)
        if self._script:
            response = self._script.popleft()
        else:
            self.unscripted += 1
            response = self.default
        if response.delay:
            gevent.sleep(response.delay)
        call.answered_at = time.monotonic()
        start_response(f"{response.status} {_REASONS.get(response.status, 'Status')}", list(response.headers))
        if response.chunked:  # an iterator of several parts: pywsgi sends it chunked
            return iter([response.body[i:i + 65536] for i in range(0, len(response.body), 65536)] or [b""])
        return [response.body]
