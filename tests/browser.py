"""Open a page in Debian's headless Chromium over the DevTools protocol, on a pipe, and watch it.

No driver library: Chromium's `--remote-debugging-pipe` speaks the DevTools protocol as
NUL-terminated JSON on file descriptors 3 (commands in) and 4 (replies and events out). The
browser runs with networking off (every host resolves to nothing, a dead proxy), and every
request, console message, exception and dialog the page causes is recorded.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
# Generous: a busy 2-core machine starts Chromium in seconds; these are limits, not expectations.
START_TIMEOUT = 120.0
CALL_TIMEOUT = 120.0


# Machine-wide, like apt itself: parallel workers (and other test runs) install Chromium once.
INSTALL_LOCK = Path("/var/lock/recorder-tests-chromium-install.lock")
# apt waits this long for another apt or dpkg (not ours) to let go of its locks.
APT_LOCK_WAIT_SECONDS = 600


def require_chromium() -> str:
    """The Chromium binary: installed with apt-get when missing and running as root, else skip (fail under CI)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        with open(INSTALL_LOCK, "a") as lock:
            # Held while installing: the other workers wait here, then find the binary.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if Path(CHROMIUM).exists():
                return CHROMIUM
            problem = _apt_install_chromium()
        if Path(CHROMIUM).exists():
            return CHROMIUM
    else:
        problem = f"{CHROMIUM} is missing and installing it needs root (apt-get install -y chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def _apt_install_chromium() -> str:
    """Install Chromium (updating the package lists when the first try fails); the problem in one line."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = f"DPkg::Lock::Timeout={APT_LOCK_WAIT_SECONDS}"
    install = ["apt-get", "-o", wait, "install", "-y", "chromium"]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "-o", wait, "update"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    return f"apt-get install chromium failed: {result.stderr.strip().splitlines()[-1:]}"


def _above_nine(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


@dataclass
class PageLog:
    """What a page did while it was open."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium; `open(path)` loads a file and returns a Page."""

    def __init__(self, binary: str = CHROMIUM) -> None:
        self._profile = tempfile.mkdtemp(prefix="recorder-chromium-")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # Move the child's ends above 9, so the shell's 3<& and 4>& cannot overwrite one of them.
        commands_read, replies_write = (_above_nine(fd) for fd in (commands_read, replies_write))
        # Chromium reads commands on fd 3 and writes on fd 4: bash puts the pipes there (dash takes single-digit fds only)
        # (no preexec_fn, which forks with this process's threads running).
        self.process = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$0" "$@" 3<&{commands_read} 4>&{replies_write} {commands_read}<&- {replies_write}>&-',
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                # Networking off: no name resolves and every connection goes to a dead proxy.
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=127.0.0.1:9",
                "--window-size=1200,900",
                "about:blank",
            ],
            pass_fds=(commands_read, replies_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("RECORDER_CHROMIUM_DEBUG") else subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._next_id = 0
        self._replies_by_id: dict[int, dict[str, Any]] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._condition = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.call("Browser.getVersion", timeout=START_TIMEOUT)

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._replies, "rb", buffering=0) as stream:
            while True:
                chunk = stream.read(65536)
                if not chunk:
                    break
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._condition:
                            self._replies_by_id[message["id"]] = message
                            self._condition.notify_all()
                    else:
                        self._events.put(message)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """Send one command and wait for its reply; raise on a protocol error."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._next_id not in self._replies_by_id:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise TimeoutError(f"no reply to {method} from Chromium")
                self._condition.wait(min(left, 1.0))
            reply = self._replies_by_id.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def event(self, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """The next event Chromium sent."""
        return self._events.get(timeout=timeout)

    def open(self, path: Path, *, width: int = 1200, height: int = 900) -> "Page":
        """Load a local file in a fresh tab, wait for its load event, and return the Page."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        page = Page(self, session)
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        page.wait_for("Page.loadEventFired")
        return page

    def close(self) -> None:
        """Close the browser and remove its profile."""
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: evaluate JavaScript, and the log of what it did."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.log = PageLog()

    def _record(self, event: dict[str, Any]) -> None:
        if event.get("sessionId") != self.session:
            return
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            self.log.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.log.console_errors.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.log.console_errors.append(params["entry"].get("text", ""))
        elif method == "Runtime.exceptionThrown":
            self.log.exceptions.append(json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Page.javascriptDialogOpening":
            self.log.dialogs.append(params.get("message", ""))
            self.browser.call("Page.handleJavaScriptDialog", {"accept": True}, session=self.session)

    def wait_for(self, method: str) -> None:
        """Record events until `method` arrives for this page."""
        while True:
            event = self.browser.event()
            self._record(event)
            if event["method"] == method and event.get("sessionId") == self.session:
                return

    def drain(self) -> None:
        """Record the events already sent."""
        while True:
            try:
                self._record(self.browser._events.get_nowait())
            except queue.Empty:
                return

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.browser.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=self.session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        self.drain()
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page."""
        import base64

        metrics = self.browser.call("Page.getLayoutMetrics", session=self.session)
        size = metrics["cssContentSize"]
        data = self.browser.call(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True,
             "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}},
            session=self.session,
        )["data"]
        path.write_bytes(base64.b64decode(data))
