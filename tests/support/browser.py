"""Headless Chromium, driven over the DevTools protocol, to see a page as a browser does.

``Browser`` is a Daemon: Debian's ``chromium`` in its own process group, its DevTools
endpoint on a free loopback port, a profile of its own under the work directory, and the
whole group stopped at the end (crash-reporter helpers linger otherwise).  ``Page.load``
opens a URL and reports what went wrong on the way: exceptions, console errors, requests
that failed, every request made (a self-contained page makes one, for itself) and any
dialog a script opened (dismissed, so a stray ``alert()`` cannot hang the test).
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import websocket

from tests.support.daemon import LOOPBACK, Daemon

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


@dataclass
class Loaded:
    """What happened while a page loaded."""

    requests: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


class Page:
    """One tab, over its DevTools web socket."""

    def __init__(self, url: str, timeout: float) -> None:
        self.timeout = timeout
        self.socket = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.calls = 0
        self.events: list[dict[str, Any]] = []  # arrived while waiting for a reply

    def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.socket.recv())
        return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its result."""
        self.calls += 1
        ident = self.calls
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def load(self, url: str) -> Loaded:
        """Navigate to ``url`` and wait for its load event."""
        seen = Loaded()
        self.events.clear()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while True:
            while self.events:
                if self._note(self.events.pop(0), seen):
                    return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load in {self.timeout} s: {seen}")
            self.events.append(self._receive())

    def _note(self, message: dict[str, Any], seen: Loaded) -> bool:
        """Record an event; True for the load event."""
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            seen.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            seen.failed.append(f"{params.get('errorText')} {params.get('blockedReason', '')}")
        elif method == "Runtime.exceptionThrown":
            seen.exceptions.append(json.dumps(params["exceptionDetails"]))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            seen.console_errors.append(json.dumps(params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            seen.console_errors.append(params["entry"]["text"])
        elif method == "Page.javascriptDialogOpening":
            seen.dialogs.append(params["message"])
            self.socket.send(json.dumps({"id": 0, "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": False}}))  # reply ignored
        return method == "Page.loadEventFired"

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.socket.close()


class Browser(Daemon):
    binary = "chromium"
    package = "chromium"

    def _command(self, binary: str) -> list[str]:
        return [binary, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update",
                "--disable-extensions", "--disable-sync",
                f"--remote-debugging-address={LOOPBACK}", f"--remote-debugging-port={self.port}",
                f"--user-data-dir={self.workdir / 'profile'}", "about:blank"]

    def _json(self, path: str) -> Any:
        with _DIRECT.open(f"http://{LOOPBACK}:{self.port}{path}", timeout=5) as answer:
            return json.load(answer)

    def _ready(self) -> bool:
        try:
            self._json("/json/version")
        except OSError:
            return False
        return True

    def page(self, timeout: float = 20) -> Page:
        """The tab the browser opened with."""
        [tab] = [t for t in self._json("/json/list") if t["type"] == "page"]
        return Page(tab["webSocketDebuggerUrl"], timeout)
