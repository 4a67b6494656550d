"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no websocket
library, no driver binary, only the standard library. Tests use it to follow links and click through the MLflow UI
the way a person does: every click is a real mouse press and release at the element's position, counted in
:attr:`Browser.clicks`, and every wait is time-boxed.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=2000,1100",
]


class BrowserError(AssertionError):
    pass


class Browser:
    """One Chromium process with one page. ``with Browser(profile) as b: b.goto(url); b.wait_text("...")``."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.clicks = 0
        self.log: list[str] = []
        profile.mkdir(parents=True, exist_ok=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def _fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            high_r, high_w = os.dup2(to_browser_r, 100), os.dup2(from_browser_w, 101)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._stderr = open(profile / "chromium.log", "w")
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=_fds, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._stderr, env=dict(os.environ, HOME=str(profile)), start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        self.target = ""
        try:
            self._attach(self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"])
        except BaseException:
            self.close()
            raise

    def _attach(self, target: str) -> None:
        self.session = None
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.target = target
        self.send("Target.activateTarget", {"targetId": target}, session=False)  # in front: it renders
        self.send("Page.enable")
        self.send("Runtime.enable")

    def follow_new_page(self, timeout: float | None = None) -> None:
        """Go on in the tab that the last click opened (a link with ``target="_blank"``), as a person would."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            pages = [t for t in self.send("Target.getTargets", session=False)["targetInfos"]
                     if t["type"] == "page" and t.get("openerId") == self.target]
            if pages:
                self._attach(pages[-1]["targetId"])
                return
            time.sleep(0.25)
        raise BrowserError(f"no new tab opened from {self.url()}")

    # --- protocol -------------------------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from Chromium in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited (status {self.proc.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool | str = True,
             timeout: float | None = None) -> dict[str, Any]:
        """One DevTools command to the page (``session=True``), the browser (False) or another session (its id)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if isinstance(session, str):
            message["sessionId"] = session
        elif session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("method") == "Runtime.consoleAPICalled":
                args = reply["params"].get("args", [])
                self.log.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args)[:500])
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    # --- what a test does -----------------------------------------------------------------------------------

    def goto(self, url: str) -> None:
        """Open ``url`` as if typed into the address bar (no click)."""
        self.send("Page.navigate", {"url": url})

    def js(self, expression: str, session: bool | str = True, context: int | None = None) -> Any:
        params: dict[str, Any] = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context is not None:
            params["contextId"] = context
        result = self.send("Runtime.evaluate", params, session=session)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:200]}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def frame_js(self, expression: str, timeout: float | None = None, what: str = "") -> Any:
        """Poll ``expression`` inside the page's iframes (MLflow shows an HTML artifact in a sandboxed iframe,
        a frame of its own process or of the page's) until it is truthy in one of them; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for value in self._in_frames(expression):
                if value:
                    return value
            if time.monotonic() > deadline:
                raise BrowserError(f"waited {timeout or self.timeout:.0f} s for {what or expression[:200]} in an "
                                   f"iframe of {self.url()}")
            time.sleep(0.5)

    def _in_frames(self, expression: str) -> list[Any]:
        values = []
        for info in self.send("Target.getTargets", session=False)["targetInfos"]:
            if info["type"] == "iframe" and info.get("parentId") == self.target:
                session = self.send("Target.attachToTarget", {"targetId": info["targetId"], "flatten": True},
                                    session=False)["sessionId"]
                try:
                    values.append(self.js(expression, session=session))
                except BrowserError:
                    values.append(None)
                finally:
                    self.send("Target.detachFromTarget", {"sessionId": session}, session=False)
        tree = self.send("Page.getFrameTree")["frameTree"]
        for child in tree.get("childFrames", []):
            try:
                world = self.send("Page.createIsolatedWorld", {"frameId": child["frame"]["id"]})
                values.append(self.js(expression, context=world["executionContextId"]))
            except BrowserError:
                values.append(None)
        return values

    def wait(self, expression: str, timeout: float | None = None, what: str = "") -> Any:
        """Poll the JavaScript ``expression`` until it is truthy; its value, or :class:`BrowserError` naming
        ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                value = self.js(expression)
            except BrowserError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"waited {timeout or self.timeout:.0f} s for {what or expression[:200]}; "
                                   f"page {self.url()}: {self.text()[-1500:]!r}")
            time.sleep(0.25)

    def url(self) -> str:
        return str(self.js("location.href"))

    def text(self) -> str:
        return str(self.js("document.body ? document.body.innerText : ''") or "")

    def wait_text(self, text: str, timeout: float | None = None) -> None:
        self.wait(f"document.body && document.body.innerText.includes({json.dumps(text)})", timeout,
                  f"the text {text!r}")

    def click(self, selector: str, text: str | None = None, timeout: float | None = None) -> None:
        """A real mouse click on the first visible element matching the CSS ``selector`` (and whose text
        contains ``text``), once it appears."""
        find = (
            f"(() => {{ const want = {json.dumps(text)};"
            f" for (const el of document.querySelectorAll({json.dumps(selector)})) {{"
            "   const r = el.getBoundingClientRect();"
            "   if (r.width === 0 || r.height === 0) continue;"
            "   if (want !== null && !(el.innerText || el.textContent || '').includes(want)) continue;"
            "   el.scrollIntoView({block: 'center', inline: 'center'});"
            "   const s = el.getBoundingClientRect();"
            "   return [s.left + s.width / 2, s.top + s.height / 2]; }"
            " return null; })()"
        )
        x, y = self.wait(find, timeout, f"a clickable {selector} {text!r}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})
        self.clicks += 1

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            os.close(self._to_browser)
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            os.close(self._from_browser)
        except OSError:
            pass
        self._stderr.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
