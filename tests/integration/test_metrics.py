"""The service's /metrics and /healthz over real HTTP, fed by real polls into real databases."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from recorder.errors import StorageError
from recorder.metrics import MetricsServer, PollMetrics
from tests.integration.test_outages import database_down, make_recorder, outage_engine  # noqa: F401


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric(body: bytes, name: str) -> float:
    """The value of one series, e.g. 'recorder_spool_depth{account="default"}'."""
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


class Outcome:
    """A poll's outcome as PollMetrics reads it: the IP's used weight and the rows it changed."""

    used_weight, changed_count = 15, 3


@pytest.fixture
def served(tmp_path):
    metrics = PollMetrics()
    server = MetricsServer(metrics, "127.0.0.1:0").start()
    yield metrics, server
    server.stop()


def test_healthz_turns_503_while_the_spool_grows_and_back_to_200(simulator, db_url, outage_engine, tmp_path, served):
    """Every storage backend: a poll the database cannot take makes /healthz 503; the replay heals it."""
    metrics, server = served
    recorder = make_recorder(simulator, outage_engine, tmp_path / "spool")
    metrics.watch("default", 60.0, recorder.spool.directory)
    recorder.observer = metrics.observe

    recorder.poll_once()
    status, body = get(server.url + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "healthy"

    with database_down(db_url):
        with pytest.raises(StorageError):
            recorder.poll_once()
        status, body = get(server.url + "/healthz")
        document = json.loads(body)
        assert status == 503
        assert document["failing"] == ["default"]
        assert document["accounts"][0]["spool_depth"] == 1
        assert "1 poll(s) waiting in the spool" in document["accounts"][0]["problems"][0]
        _, text = get(server.url + "/metrics")
        assert metric(text, 'recorder_spool_depth{account="default"}') == 1
        assert metric(text, 'recorder_healthy{account="default"}') == 0

    recorder.poll_once()
    status, body = get(server.url + "/healthz")
    assert status == 200 and json.loads(body)["accounts"][0]["spool_depth"] == 0
    _, text = get(server.url + "/metrics")
    assert metric(text, 'recorder_polls_total{account="default",outcome="ok"}') == 2
    assert metric(text, 'recorder_polls_total{account="default",outcome="failed"}') == 1
    assert metric(text, 'recorder_poll_duration_seconds_count{account="default"}') == 3
    # The first poll wrote one row per served asset; the unchanged ones after it none.
    assert metric(text, 'recorder_rows_written_total{account="default"}') == len(simulator.served[0].rows)
    assert metric(text, 'recorder_used_weight{account="default"}') == simulator.requests_log[-1].used_weight
    recorder.client.close()


def test_metrics_are_per_account_and_failures_count_until_a_success(served):
    metrics, server = served
    metrics.watch("alpha", 60.0)
    metrics.watch("beta", 60.0)

    metrics.observe("alpha", Outcome(), None, 0.02)
    for _ in range(3):
        metrics.observe("beta", None, StorageError("down"), 0.5)
    _, text = get(server.url + "/metrics")
    assert metric(text, 'recorder_consecutive_failures{account="alpha"}') == 0
    assert metric(text, 'recorder_consecutive_failures{account="beta"}') == 3
    assert metric(text, 'recorder_rows_written_total{account="alpha"}') == 3
    assert metric(text, 'recorder_rows_written_total{account="beta"}') == 0
    assert metric(text, 'recorder_poll_duration_seconds_bucket{account="beta",le="0.5"}') == 3
    assert metric(text, 'recorder_poll_duration_seconds_bucket{account="beta",le="0.25"}') == 0
    status, _ = get(server.url + "/nothing")
    assert status == 404


def test_a_poll_of_an_account_forgotten_meanwhile_is_not_judged(served):
    """A poll that ends after its account was handed over (forget) must not bring it back: /healthz
    would call it unhealthy a tolerance later, though another recorder polls it fine."""
    metrics, server = served
    metrics.watch("alpha", 60.0)
    metrics.watch("beta", 60.0)
    metrics.forget("beta")

    metrics.observe("beta", Outcome(), None, 0.02)
    metrics.observe("beta", None, StorageError("down"), 0.5)
    status, body = get(server.url + "/healthz")
    assert status == 200 and [a["account"] for a in json.loads(body)["accounts"]] == ["alpha"]
    _, text = get(server.url + "/metrics")
    assert 'account="beta"' not in text.decode()


def test_a_forgotten_account_leaves_no_series_behind(served):
    """Handed over after its polls: none of its series stays, its poll counts included."""
    metrics, server = served
    metrics.watch("alpha", 60.0)
    metrics.watch("beta", 60.0)

    metrics.observe("beta", Outcome(), None, 0.02)
    metrics.observe("beta", None, StorageError("down"), 0.5)
    assert 'recorder_polls_total{account="beta",outcome="failed"} 1.0' in get(server.url + "/metrics")[1].decode()
    metrics.forget("beta")
    text = get(server.url + "/metrics")[1].decode()
    assert 'account="beta"' not in text
    assert 'recorder_consecutive_failures{account="alpha"} 0.0' in text


class _CountThenWait:
    """recorder_polls as PollMetrics uses it, pausing each poll right after its count until released."""

    def __init__(self, counter) -> None:
        self.counter, self.counted, self.release = counter, threading.Event(), threading.Event()

    def labels(self, *labels: str):
        child, pause = self.counter.labels(*labels), self

        class Child:
            def inc(self, amount: float = 1) -> None:
                child.inc(amount)
                pause.counted.set()
                assert pause.release.wait(60), "never released"

        return Child()

    def remove(self, *labels: str) -> None:
        self.counter.remove(*labels)


def test_a_scrape_sees_a_poll_whole_or_not_at_all(served):
    """A scrape between a poll's count and its time saw an ok poll without a last good poll time
    (CI, under load). A scrape now waits for the poll's figures to be published together."""
    metrics, server = served
    metrics.watch("alpha", 60.0)
    pause = metrics._polls = _CountThenWait(metrics._polls)

    poll = threading.Thread(target=metrics.observe, args=("alpha", Outcome(), None, 0.02))
    poll.start()
    assert pause.counted.wait(60)
    scraped: list[bytes] = []
    scrape = threading.Thread(target=lambda: scraped.append(get(server.url + "/metrics")[1]))
    scrape.start()
    # The scrape waits for the poll; before the fix it answered at once with half the poll.
    scrape.join(1.0)
    assert scrape.is_alive(), scraped[0].decode()
    pause.release.set()
    poll.join()
    scrape.join()
    (text,) = scraped
    assert metric(text, 'recorder_polls_total{account="alpha",outcome="ok"}') == 1
    assert metric(text, 'recorder_last_good_poll_timestamp_seconds{account="alpha"}') > 0
    assert metric(text, 'recorder_rows_written_total{account="alpha"}') == 3
    assert metric(text, 'recorder_used_weight{account="alpha"}') == 15


def _voluntary_switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


# epoll_wait, epoll_pwait and epoll_pwait2 on x86_64, epoll_pwait on aarch64.
_EPOLL_WAITS = {"232", "281", "441", "22"}


def _waiting_in_epoll(native_id: int) -> bool:
    return Path(f"/proc/self/task/{native_id}/syscall").read_text().split()[0] in _EPOLL_WAITS


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to watch a thread's wake-ups")
def test_idle_endpoint_never_wakes_and_stops_promptly():
    """Between scrapes the accept thread sleeps in select() with no timeout: no periodic wake-up.

    serve_forever's default poll_interval (0.5 s) would show here as two switches per second.
    """
    server = MetricsServer(PollMetrics(), "127.0.0.1:0").start()
    try:
        assert get(server.url + "/healthz")[0] == 503  # nothing watched: nothing is being recorded
        thread = next(t for t in threading.enumerate() if t.name == "metrics-http")
        # The condition, not a delay: the scrape's accept is over once the thread waits again.
        deadline = time.monotonic() + 60
        while not _waiting_in_epoll(thread.native_id):
            assert time.monotonic() < deadline, "the accept thread never went back to waiting"
            time.sleep(0.01)
        before = _voluntary_switches(thread.native_id)
        time.sleep(1.5)  # a window, not a deadline: any periodic wake-up inside it is a failure
        assert _voluntary_switches(thread.native_id) == before
        assert _waiting_in_epoll(thread.native_id)
    finally:
        server.stop()
    assert not thread.is_alive()
    server.stop()  # idempotent
