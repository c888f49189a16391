"""A hostile exchange, over real HTTP: requests stay with the configured host, a request has a whole
deadline, waits are bounded, and every failure of the HTTP layer is an ExchangeError recorded as a failed
poll. The simulator injects the faults; a tiny raw-socket server sends what no simulator would."""

from __future__ import annotations

import logging
import signal
import socket
import socketserver
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from sqlalchemy import select

from recorder.errors import BadPayload, ExchangeError, ExchangeUnavailable, RateLimited
from recorder.exchange import MAX_WAIT_SECONDS, RETRY_ATTEMPTS, BinanceFuturesClient
from recorder.models import Balance, Poll
from recorder.service import Recorder
from tests.conftest import SIM_KEY, SIM_SECRET

# Generous: each bound only proves "it did not hang"; the hostile senders below would take minutes.
DID_NOT_HANG_SECONDS = 20.0


class Counter(socketserver.ThreadingTCPServer):
    """Counts every connection made to it and answers none: where a followed redirect would land."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), CountingHandler)

    @property
    def origin(self) -> str:
        """scheme://host:port of this server."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class CountingHandler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True
    server: Counter

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        self.connection.settimeout(5)
        try:
            data = self.connection.recv(65536)
        except OSError:
            data = b""
        with self.server.lock:
            self.server.received += data


@pytest.fixture
def counter() -> Iterator[Counter]:
    server = Counter()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def make_client(base_url: str, **overrides) -> BinanceFuturesClient:
    options = {"api_key": SIM_KEY, "api_secret": SIM_SECRET, "timeout": 5.0, "sleep": lambda seconds: None}
    return BinanceFuturesClient(base_url=base_url, **{**options, **overrides})


@pytest.fixture
def client(simulator) -> Iterator[BinanceFuturesClient]:
    client = make_client(simulator.base_url, retry_attempts=1)
    yield client
    client.close()


def assert_clean_message(error: BaseException) -> str:
    """One printable line, with nothing of the signed query in it."""
    message = str(error)
    assert message.isprintable(), message
    for secret_part in ("signature", "timestamp=", "recvWindow", SIM_SECRET, SIM_KEY):
        assert secret_part not in message
    return message


# -- redirects --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_redirect_any_3xx_is_refused_and_nothing_reaches_the_other_host(status, simulator, client, counter):
    simulator.inject(f"redirect-{status}", location=counter.origin)
    with pytest.raises(ExchangeUnavailable) as caught:
        client.fetch_balances()
    assert type(caught.value) is ExchangeUnavailable and caught.value.http_status == status
    message = assert_clean_message(caught.value)
    assert message == (f"/fapi/v2/balance: HTTP {status} redirect to {counter.origin}, not followed "
                       f"(recorder sends requests only to {simulator.base_url})")
    assert counter.connections == 0 and counter.received == b""
    assert client.fetch_balances().account_alias == "SgsR"  # the same client goes on, with the same host


@pytest.mark.parametrize("fault", ["redirect-302", "bad-location"])
def test_redirect_poll_is_recorded_failed_and_the_other_host_gets_nothing(fault, simulator, sessions, counter):
    """The issue's "done when": a 302 to another port receives nothing, and the poll is a failed row."""
    client = make_client(simulator.base_url)
    recorder = Recorder(client=client, sessions=sessions, account="default")
    simulator.inject(fault, times=RETRY_ATTEMPTS, location=counter.origin)
    with pytest.raises(ExchangeUnavailable) as caught:
        recorder.poll_once()
    client.close()
    assert caught.value.http_status == 302
    message = assert_clean_message(caught.value)
    expected = "redirect with a malformed Location" if fault == "bad-location" else f"redirect to {counter.origin}"
    assert expected in message
    assert counter.connections == 0 and counter.received == b""
    balance_requests = [r for r in simulator.requests_log if r.path == "/fapi/v2/balance"]
    assert [r.status for r in balance_requests] == [302] * RETRY_ATTEMPTS
    with sessions() as session:
        poll = session.scalars(select(Poll)).one()
        assert (poll.outcome, poll.error_class, poll.http_status) == ("failed", "ExchangeUnavailable", 302)
        assert poll.error_message == message
        assert session.scalars(select(Balance)).all() == []


def test_redirect_of_the_server_time_request_is_refused_too(hostile, counter):
    """/fapi/v1/time, unsigned, still carries the API key header: it is not followed either."""
    server = hostile(lambda path: b"HTTP/1.1 302 Found\r\nLocation: " + counter.origin.encode() + path.encode()
                     + b"\r\nContent-Length: 0\r\n\r\n", hostile_time=True)
    client = make_client(server.origin, retry_attempts=1)
    with pytest.raises(ExchangeUnavailable, match=r"^/fapi/v1/time: HTTP 302 redirect to http://127\.0\.0\.1:"):
        client.fetch_balances()
    client.close()
    assert counter.connections == 0


# -- the whole-request deadline ------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["trickle", "trickle-head"])
def test_trickling_answer_fails_at_the_deadline(fault, simulator):
    """A byte every 0.5 s, each well inside the read timeout: ~15 minutes of body, cut at timeout=1."""
    client = make_client(simulator.base_url, timeout=1.0, retry_attempts=1)
    client.sync_clock()
    simulator.inject(fault, seconds=0.5)
    began = time.monotonic()
    with pytest.raises(ExchangeUnavailable) as caught:
        client.fetch_balances()
    elapsed = time.monotonic() - began
    assert assert_clean_message(caught.value) == "/fapi/v2/balance: no complete answer within 1s (timeout)"
    assert caught.value.http_status is None
    assert elapsed < DID_NOT_HANG_SECONDS
    # The timed-out connection was not returned to the pool: the next request works.
    assert client.fetch_balances().account_alias == "SgsR"
    client.close()


def fails_at_the_deadline(simulator, fault: str, seconds: float, *, then_works: bool = True) -> None:
    """A 1 s deadline ends a request the fault holds up, with the timeout's message (and the next one works)."""
    client = make_client(simulator.base_url, timeout=1.0, retry_attempts=1)
    client.sync_clock()
    simulator.inject(fault, seconds=seconds)
    began = time.monotonic()
    with pytest.raises(ExchangeUnavailable, match=r"^/fapi/v2/balance: no complete answer within 1s \(timeout\)$"):
        client.fetch_balances()
    assert time.monotonic() - began < DID_NOT_HANG_SECONDS
    if then_works:
        assert client.fetch_balances().account_alias == "SgsR"
    client.close()


def test_deadline_on_the_main_thread_is_an_alarm_disarmed_after_each_request(simulator):
    """`recorder run` with one account polls on the main thread: SIGALRM bounds the request, no thread."""
    assert threading.current_thread() is threading.main_thread()
    fails_at_the_deadline(simulator, "trickle", 0.5)
    assert signal.getsignal(signal.SIGALRM).__name__ == "_on_alarm"
    # Disarmed after the request: no alarm left to land in whatever runs next.
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_stalled_server_fails_at_the_deadline_on_the_main_thread(simulator):
    """No byte at all: the alarm interrupts the blocked read (socket timeouts alone would wait longer)."""
    fails_at_the_deadline(simulator, "stall", 30, then_works=False)


def test_deadline_on_a_worker_thread_uses_the_watchdog(simulator):
    """Pool workers (several accounts) cannot take SIGALRM: the watchdog thread keeps their deadlines."""
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            fails_at_the_deadline(simulator, "trickle", 0.5)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failures.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert failures == []


def test_someone_elses_alarm_is_left_alone_and_the_deadline_still_holds(simulator):
    """An application that owns SIGALRM keeps it: the request falls back to the watchdog thread."""
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, _frame: fired.append(signum))
    try:
        fails_at_the_deadline(simulator, "trickle", 0.5)
        assert signal.getsignal(signal.SIGALRM) is not None
        assert signal.getsignal(signal.SIGALRM).__name__ == "<lambda>"
        assert fired == []
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_trickling_server_time_fails_at_the_deadline(hostile):
    def trickle(path: str) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"{" * 40

    server = hostile(trickle, byte_gap=0.5, hostile_time=True)
    client = make_client(server.origin, timeout=1.0, retry_attempts=1)
    began = time.monotonic()
    with pytest.raises(ExchangeUnavailable, match=r"^/fapi/v1/time: no complete answer within 1s \(timeout\)$"):
        client.fetch_balances()
    assert time.monotonic() - began < DID_NOT_HANG_SECONDS
    client.close()


def test_huge_body_is_refused_without_reading_it_all(simulator, client):
    simulator.inject("huge-body")
    with pytest.raises(BadPayload) as caught:
        client.fetch_balances()
    assert str(caught.value) == "/fapi/v2/balance: HTTP 200 body larger than 8 MiB; not read"
    assert client.fetch_balances().account_alias == "SgsR"


def test_huge_declared_body_is_refused_before_reading(hostile):
    server = hostile(lambda path: b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n[")
    client = make_client(server.origin, retry_attempts=1)
    with pytest.raises(BadPayload, match="larger than 8 MiB"):
        client.fetch_balances()
    client.close()


# -- bounded waits ---------------------------------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("retry_after", "expected", "warning"), [
    ("inf", 60.0, "ignoring Retry-After inf"),
    ("99999999999", MAX_WAIT_SECONDS, "waiting the maximum of 3600 s"),
    ("42", 42.0, None),
])
def test_retry_after_from_the_exchange_is_bounded(retry_after, expected, warning, simulator, caplog):
    monotonic = FakeMonotonic()
    client = make_client(simulator.base_url, monotonic=monotonic)
    simulator.inject("retry-after-inf" if retry_after == "inf" else "rate-429", retry_after=retry_after)
    with caplog.at_level(logging.WARNING, logger="recorder.exchange"):
        with pytest.raises(RateLimited) as caught:
            client.fetch_balances()
    assert caught.value.retry_after == expected
    warnings = [r.getMessage() for r in caplog.records if r.name == "recorder.exchange"]
    assert (warnings == []) if warning is None else (len(warnings) == 1 and warning in warnings[0])
    sent = len(simulator.requests_log)
    with pytest.raises(RateLimited, match="not sent"):
        client.fetch_balances()
    assert len(simulator.requests_log) == sent
    monotonic.now += expected + 1
    assert client.fetch_balances().account_alias == "SgsR"  # polling resumes: never "until restart"
    client.close()


# -- exchange text and numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "error_class", "code", "in_message"), [
    ("nul-msg", ExchangeError, -1000, "An unknown\\x00 error\\x1b[2J occured Injected-Line: yes\\x07\\u202e."),
    ("huge-code", ExchangeUnavailable, None, "error code -98765432109876543210987654321 out of range"),
    ("alias-nul", BadPayload, None, "field 'accountAlias' is not 1 to 64 printable characters: S\\x00gsR"),
])
def test_hostile_text_and_numbers_become_a_clean_failed_poll(fault, error_class, code, in_message, simulator,
                                                            sessions):
    """NUL and control characters never reach a message or the database (PostgreSQL refuses NUL in text)."""
    client = make_client(simulator.base_url)
    recorder = Recorder(client=client, sessions=sessions, account="default")
    simulator.inject(fault, times=RETRY_ATTEMPTS)
    with pytest.raises(ExchangeError) as caught:
        recorder.poll_once()
    client.close()
    assert type(caught.value) is error_class and caught.value.code == code
    message = assert_clean_message(caught.value)
    assert in_message in message
    with sessions() as session:
        poll = session.scalars(select(Poll)).one()
        assert (poll.outcome, poll.error_class, poll.error_code, poll.error_message) == (
            "failed", error_class.__name__, code, message)


def test_absurd_used_weight_is_unknown_and_the_poll_stores(simulator, sessions, caplog):
    client = make_client(simulator.base_url)
    recorder = Recorder(client=client, sessions=sessions, account="default")
    simulator.inject("huge-weight")
    with caplog.at_level(logging.INFO, logger="recorder.exchange"):
        outcome = recorder.poll_once()
    client.close()
    assert outcome.outcome == "ok"
    assert any("ignoring X-MBX-USED-WEIGHT-1M 98765432109876543210987654321" in r.getMessage()
               for r in caplog.records)
    with sessions() as session:
        poll = session.scalars(select(Poll)).one()
        assert (poll.outcome, poll.used_weight) == ("ok", None)
        # The poll log keeps the reason beside the NULL.
        assert poll.error_message == "[used weight 98765432109876543210987654321 out of range, stored as NULL]"
        assert len(session.scalars(select(Balance)).all()) == 8


# -- every failure of the HTTP layer is an ExchangeError ---------------------------------------------


class HostileServer(socketserver.ThreadingTCPServer):
    """Answers /fapi/v1/time properly (unless told otherwise) and everything else with raw bytes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Callable[[str], bytes | None], byte_gap: float, hostile_time: bool,
                 tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.byte_gap = byte_gap
        self.hostile_time = hostile_time
        self.tls = tls
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), HostileHandler)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock.settimeout(10)
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, address

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"


class HostileHandler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True
    server: HostileServer

    def handle(self) -> None:
        """One request per connection, then close: every answer here ends the connection."""
        self.connection.settimeout(10)
        try:
            request_line = self.rfile.readline(65537).decode("latin-1")
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
        except OSError:
            return
        target = request_line.split(" ")[1] if request_line.count(" ") >= 2 else "/"
        if target.split("?", 1)[0] == "/fapi/v1/time" and not self.server.hostile_time:
            body = b'{"serverTime":%d}' % (time.time_ns() // 1_000_000)
            data: bytes | None = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
                len(body), body)
        else:
            data = self.server.answer(target)
        try:
            if data is None:  # reset: linger 0 turns close() into an RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.server.byte_gap:
                for index in range(len(data)):
                    self.wfile.write(data[index:index + 1])
                    if self.server.stopping.wait(self.server.byte_gap):
                        break
            else:
                self.wfile.write(data)
            self.connection.close()  # directly: socketserver would first send a FIN (shutdown SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    servers: list[tuple[HostileServer, threading.Thread]] = []

    def start(answer: Callable[[str], bytes | None], *, byte_gap: float = 0.0,
              hostile_time: bool = False, tls: ssl.SSLContext | None = None) -> HostileServer:
        server = HostileServer(answer, byte_gap, hostile_time, tls)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


def raw(head: str, body: bytes = b"") -> Callable[[str], bytes]:
    """An answer of `head` (\\n line ends, {length} for the body's length) and `body`, byte for byte."""
    data = head.replace("\n", "\r\n").replace("{length}", str(len(body))).encode("latin-1") + body
    return lambda target: data


GZIP_GARBAGE = b"this is not gzip at all"


def gzip_bomb(mebibytes: int) -> bytes:
    """`mebibytes` MiB of zeros, gzipped to about a thousandth of that."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(mebibytes)) + compressor.flush()


BOMB = gzip_bomb(64)
UPSTREAM_FAILURES: dict[str, tuple[Callable[[str], bytes | None], type[ExchangeError], str]] = {
    "garbage status line": (raw("SPLORK\n\n"), ExchangeUnavailable, "a malformed HTTP answer"),
    "status out of range": (raw("HTTP/1.1 1000 Huge\nContent-Length: 0\n\n"), ExchangeUnavailable,
                            "a malformed HTTP answer"),
    "status line too long": (raw("HTTP/1.1 200 " + "O" * 70000 + "\n\n"), ExchangeUnavailable,
                             "an HTTP status or header line is too long"),
    "header line too long": (raw("HTTP/1.1 200 OK\nX-Long: " + "a" * 70000 + "\nContent-Length: 2\n\n", b"[]"),
                             ExchangeUnavailable, "an HTTP status or header line is too long"),
    "too many headers": (raw("HTTP/1.1 200 OK\n" + "X-H: 1\n" * 150 + "Content-Length: 2\n\n", b"[]"),
                         ExchangeUnavailable, "a malformed HTTP answer"),
    "malformed header": (raw("HTTP/1.1 200 OK\nContent-Length: 2\n no-colon continuation\nBroken header\n\n",
                             b"[]"), BadPayload, "empty asset list"),
    "header bytes not text": (raw("HTTP/1.1 503 \xff\xfe\nX-Bin: \x80\x81\nContent-Length: 2\n\n", b"{}"),
                              ExchangeUnavailable, "HTTP 503: unexpected body: {}"),
    "body shorter than Content-Length": (raw("HTTP/1.1 200 OK\nContent-Length: 100\n\n", b"[{\"asset\""),
                                         ExchangeUnavailable, "the answer ended before its declared length"),
    # http.client reads a negative length as "until close": the body then parses, or not, as usual.
    "negative Content-Length": (raw("HTTP/1.1 200 OK\nContent-Length: -5\n\n", b"[]"), BadPayload, "empty asset list"),
    "non-numeric Content-Length": (raw("HTTP/1.1 200 OK\nContent-Length: 1e3\n\n", b"[]"), BadPayload,
                                   "empty asset list"),
    "broken chunked encoding": (raw("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\nzz\n[]\n0\n\n"),
                                ExchangeUnavailable, "the body's chunked encoding is broken"),
    "undecodable gzip": (raw(f"HTTP/1.1 200 OK\nContent-Encoding: gzip\nContent-Length: {len(GZIP_GARBAGE)}\n\n",
                             GZIP_GARBAGE), ExchangeUnavailable, "the body cannot be decoded (Content-Encoding)"),
    "closed without answering": (raw(""), ExchangeUnavailable, "the exchange closed the connection without answering"),
    "connection reset": (lambda target: None, ExchangeUnavailable, "connection reset by the exchange"),
    "only 100 Continue": (raw("HTTP/1.1 100 Continue\n\n"), ExchangeUnavailable,
                          "the exchange closed the connection without answering"),
    "redirect with binary Location": (raw("HTTP/1.1 302 Found\nLocation: http://\x80\xff/\x00?\nContent-Length: 0\n\n"),
                                      ExchangeUnavailable, "redirect with a malformed Location"),
    "redirect with relative Location": (lambda target: f"HTTP/1.1 307 X\r\nLocation: {target}\r\n"
                                        "Content-Length: 0\r\n\r\n".encode(), ExchangeUnavailable,
                                        "redirect to a path on the same host"),
    "gzip bomb": (raw("HTTP/1.1 200 OK\nContent-Encoding: gzip\nContent-Length: {length}\n\n", BOMB), BadPayload,
                  "HTTP 200 body larger than 8 MiB; not read"),
    "interim 103 before the answer": (raw("HTTP/1.1 103 Early Hints\nLink: </x>\n\nHTTP/1.1 200 OK\n"
                                          "Content-Length: 2\n\n", b"[]"), ExchangeUnavailable, "HTTP 103: empty body"),
    "status 999": (raw("HTTP/1.1 999 Odd\nContent-Length: 0\n\n"), ExchangeUnavailable, "HTTP 999: empty body"),
    "error body of HTML with control characters": (
        raw("HTTP/1.1 502 Bad\nContent-Type: text/html\nContent-Length: {length}\n\n",
            b"<html><title>Bad\x00\x1b]0;pwn\x07 Gate</title></html>"),
        ExchangeUnavailable, "HTML page instead of JSON (Bad\\x00\\x1b]0;pwn\\x07 Gate)"),
}


@pytest.mark.parametrize("case", sorted(UPSTREAM_FAILURES))
def test_every_upstream_failure_is_an_exchange_error(case, hostile, caplog):
    """The contract: fetch_balances() raises only ExchangeError subclasses, one clean line each."""
    answer, error_class, in_message = UPSTREAM_FAILURES[case]
    server = hostile(answer)
    client = make_client(server.origin, retry_attempts=1)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ExchangeError) as caught:
            client.fetch_balances()
    client.close()
    assert type(caught.value) is error_class, caught.value
    message = assert_clean_message(caught.value)
    assert message.startswith("/fapi/v2/balance: ") and in_message in message
    # No log line of ours or of urllib3 (which logs URLs, even at WARNING for a bad header) has the query.
    if case == "malformed header":
        logged = [r.getMessage() for r in caplog.records if r.name == "urllib3.connection"]
        assert any("Failed to parse headers" in line and "/fapi/v2/balance?<query removed>)" in line for line in logged)
    for record in caplog.records:
        assert "signature=" not in record.getMessage() and "timestamp=" not in record.getMessage()


def test_every_upstream_failure_of_the_clock_request_is_an_exchange_error(hostile):
    for case, (answer, _, _) in sorted(UPSTREAM_FAILURES.items()):
        server = hostile(answer, hostile_time=True)
        client = make_client(server.origin, retry_attempts=1)
        with pytest.raises(ExchangeError) as caught:
            client.fetch_balances()
        client.close()
        assert str(caught.value).startswith("/fapi/v1/time: "), case
        assert_clean_message(caught.value)


# -- the same over TLS: the deadline interrupts an SSL socket too ---------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_client(server: HostileServer, cert_path: Path, **overrides) -> BinanceFuturesClient:
    client = make_client(server.origin, retry_attempts=1, **overrides)
    client._session.verify = str(cert_path)  # trust the test's own CA; verification itself stays on
    return client


@pytest.fixture
def tls_context(tls_files) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    return context


def test_trickling_answer_over_tls_fails_at_the_deadline(hostile, tls_files, tls_context):
    server = hostile(raw("HTTP/1.1 200 OK\nContent-Length: 40\n\n", b"[" * 40), byte_gap=0.5, tls=tls_context)
    client = tls_client(server, tls_files[0], timeout=1.0)
    began = time.monotonic()
    # The server trickles every answer, the clock request's too.
    with pytest.raises(ExchangeUnavailable, match=r"^/fapi/v1/time: no complete answer within 1s \(timeout\)$"):
        client.fetch_balances()
    assert time.monotonic() - began < DID_NOT_HANG_SECONDS
    client.close()


def test_redirect_over_tls_is_refused(hostile, tls_files, tls_context, counter):
    server = hostile(lambda target: f"HTTP/1.1 301 Moved\r\nLocation: {counter.origin}{target}\r\n"
                     "Content-Length: 0\r\n\r\n".encode(), tls=tls_context)
    client = tls_client(server, tls_files[0])
    with pytest.raises(ExchangeUnavailable) as caught:
        client.fetch_balances()
    client.close()
    assert caught.value.http_status == 301 and counter.connections == 0
    assert f"redirect to {counter.origin}, not followed" in assert_clean_message(caught.value)


def test_untrusted_certificate_is_a_tls_error(hostile, tls_context):
    server = hostile(raw("HTTP/1.1 200 OK\nContent-Length: 2\n\n", b"[]"), tls=tls_context)
    client = make_client(server.origin, retry_attempts=1)
    with pytest.raises(ExchangeUnavailable, match=r"^/fapi/v1/time: TLS error \(certificate or handshake\)$"):
        client.fetch_balances()
    client.close()


@pytest.mark.parametrize(("base_url", "api_key", "in_message"), [
    ("http://127.0.0.1:99999", SIM_KEY, "the request URL or a header is invalid"),
    ("http://exa mple.test", SIM_KEY, None),
    ("http://127.0.0.1:9", "key\nInjected: header", "the request URL or a header is invalid"),
    ("http://127.0.0.1:9", "k\u00e9y-\u4e2d", "a request header is not Latin-1 text (check BINANCE_API_KEY)"),
])
def test_requests_own_refusals_are_exchange_errors(base_url, api_key, in_message):
    """What requests refuses before sending (a bad port, URL or header value) is an ExchangeError too."""
    client = make_client(base_url, api_key=api_key, retry_attempts=1)
    with pytest.raises(ExchangeError) as caught:
        client.fetch_balances()
    client.close()
    message = str(caught.value)
    assert message.startswith("/fapi/v1/time: ") and message.isprintable() and api_key not in message
    assert in_message is None or in_message in message
