#!/usr/bin/env python3
"""Drive headless Chromium against the `mesh dashboard` page and report what it shows.

Usage:
  cdp_check.py --url URL --screenshot OUT.png [--chromium chromium] [--timeout 40]
               [--nodes 3] [--edges 2] [--tap-rows 1] [--full-page]

Chromium is started with --remote-debugging-pipe: it reads DevTools protocol
commands from fd 3 and writes responses and events to fd 4, one JSON object per
message, each terminated by a NUL byte. Python 3 standard library only.

Waits until the page has rendered (body[data-loaded="1"]) with at least --nodes
graph nodes, --edges graph edges and --tap-rows tap rows, takes a PNG screenshot
and prints one JSON object on stdout:

  {"ok": true, "failure": null, "elapsed_s": 2.1,
   "nodes": [ids...], "edges": [{"src","dst","rps","success","p99","mtls"}],
   "workloads": {"demo/api": {"rps", "success", "p50", "p95", "p99", "meshed": "2/2"}},
   "edge_rows": n, "tap_rows": n, "tap_sample": [first 3 rows' text],
   "errors": [console errors and uncaught exceptions], "screenshot": path}

Exit status: 0 when the page reached the wanted state, 1 otherwise (timeout,
navigation failure, Chromium not found or died); the reason goes to stderr and
to "failure". Chromium is always killed and its temporary profile removed.
"""

import argparse
import base64
import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Evaluated in the page; returns everything the report needs.
STATE_JS = r"""
(() => {
  const q = (root, sel) => Array.from((root || document).querySelectorAll(sel));
  const num = (v) => {
    if (v === undefined || v === null || v === '') return null;
    const n = Number(v);
    return Number.isFinite(n) ? n : null;
  };
  const body = document.body;
  const field = (tr, f) => tr.querySelector('td[data-field="' + f + '"]');
  const workloads = Object.create(null);  // ids are page data: no __proto__ surprises
  q(document, '#workloads tbody tr[data-id]').forEach((tr) => {
    const v = (f) => { const c = field(tr, f); return c ? num(c.getAttribute('data-value')) : null; };
    const m = field(tr, 'meshed');
    workloads[tr.getAttribute('data-id')] = {
      rps: v('rps'), success: v('success'), p50: v('p50'), p95: v('p95'), p99: v('p99'),
      meshed: m ? m.textContent : null,
    };
  });
  const tapRows = q(document, '#tap .tap-row');
  const err = document.getElementById('error');
  return {
    ready_state: document.readyState,
    loaded: body ? (body.dataset.loaded || null) : null,
    renders: body ? num(body.dataset.renders) : null,
    nodes: q(document, '#graph .node').map((g) => g.getAttribute('data-id')),
    edges: q(document, '#graph .edge').map((g) => ({
      src: g.getAttribute('data-src'), dst: g.getAttribute('data-dst'),
      rps: num(g.getAttribute('data-rps')), success: num(g.getAttribute('data-success')),
      p99: num(g.getAttribute('data-p99')), mtls: g.getAttribute('data-mtls') === 'true',
    })),
    workloads,
    edge_rows: q(document, '#edges tbody tr[data-src]').length,
    tap_rows: tapRows.length,
    tap_sample: tapRows.slice(0, 3).map((tr) =>
      q(tr, 'td').map((td) => td.textContent.trim()).join(' | ')),
    error_banner: err && !err.hidden ? err.textContent : null,
    status: (document.getElementById('status') || {}).textContent || null,
  };
})()
"""


class CDPError(Exception):
    pass


class Browser:
    """A Chromium process and a minimal DevTools client over its pipe."""

    def __init__(self, binary, profile, log_path):
        cmd_r, cmd_w = os.pipe()    # we write commands, Chromium reads fd 3
        resp_r, resp_w = os.pipe()  # Chromium writes fd 4, we read
        # Two pipes hold four descriptors, so fds 3 and 4 are open in this
        # process (pass_fds requires that) and neither is Popen's error pipe.

        def child_fds():
            # Move the child's ends out of the way first, then onto 3 and 4, so
            # it does not matter which numbers os.pipe() handed out.
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(resp_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.close(a)
            os.close(b)

        args = [
            binary,
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check",
            "--user-data-dir=" + profile,
            "--window-size=1400,1000",
            "--hide-scrollbars", "--mute-audio",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--metrics-recording-only", "--disable-breakpad",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                pass_fds=(3, 4), preexec_fn=child_fds, start_new_session=True)
        finally:
            os.close(cmd_r)
            os.close(resp_w)
        self.wfd = cmd_w
        self.rfd = resp_r
        self.next_id = 0
        self.inbox = queue.Queue()
        self.events = []            # events seen while waiting for responses
        self.on_event = None
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()

    def _read_loop(self):
        buf = b""
        try:
            while True:
                chunk = os.read(self.rfd, 1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    try:
                        self.inbox.put(json.loads(raw.decode("utf-8", "replace")))
                    except ValueError:
                        pass
        except OSError:
            pass
        self.inbox.put(None)  # EOF: Chromium closed the pipe (exited)

    def send(self, method, params=None, session=None, timeout=15.0):
        self.next_id += 1
        mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                n = os.write(self.wfd, data)
                data = data[n:]
        except (BrokenPipeError, OSError) as e:
            raise CDPError("cannot write to Chromium (%s): it exited?" % e)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError("no reply to %s within %.0f s" % (method, timeout))
            try:
                msg = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                self.inbox.put(None)
                raise CDPError("Chromium closed the DevTools pipe while waiting for %s" % method)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CDPError("%s failed: %s" % (method, msg["error"].get("message", msg["error"])))
                return msg.get("result", {})
            if "method" in msg and self.on_event:
                self.on_event(msg)

    def wait_event(self, methods, timeout):
        """Dispatch events until one named in methods arrives; False on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = self.inbox.get(timeout=left)
            except queue.Empty:
                return False
            if msg is None:
                self.inbox.put(None)
                return False
            if "method" in msg:
                if self.on_event:
                    self.on_event(msg)
                if msg["method"] in methods:
                    return True

    def drain_events(self):
        while True:
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return
            if msg is None:
                self.inbox.put(None)
                return
            if "method" in msg and self.on_event:
                self.on_event(msg)

    def close(self):
        """Stop Chromium (only the process this object started) and its children."""
        proc = self.proc
        if proc.poll() is None:
            try:
                self.send("Browser.close", timeout=3)
            except Exception:
                pass
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=3)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        # Helpers (zygote, renderer) live in the new session/process group whose
        # id is the PID we started; sweep any that outlived the browser.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()


def find_chromium(name):
    tried = []
    for cand in ([name] if name else []) + [c for c in CANDIDATES if c != name]:
        tried.append(cand)
        path = cand if os.sep in cand else shutil.which(cand)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path, tried
    return None, tried


def log_tail(path, n=1500):
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data[-n:].decode("utf-8", "replace").strip()
    except OSError:
        return ""


def describe_exception(params):
    d = params.get("exceptionDetails", {})
    exc = d.get("exception") or {}
    text = exc.get("description") or d.get("text") or "exception"
    where = d.get("url") or ""
    if where:
        text += " (%s:%s:%s)" % (where, d.get("lineNumber", 0) + 1, d.get("columnNumber", 0) + 1)
    return "exception: " + text


def describe_console(params):
    parts = []
    for a in params.get("args", []):
        if "value" in a:
            parts.append(a["value"] if isinstance(a["value"], str) else json.dumps(a["value"]))
        else:
            parts.append(a.get("description") or a.get("type", "?"))
    return "console.%s: %s" % (params.get("type"), " ".join(str(p) for p in parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--screenshot", required=True, help="PNG file to write")
    ap.add_argument("--chromium", default="chromium", help="binary name or path (default chromium; "
                    "chromium-browser and google-chrome are tried when it is not found)")
    ap.add_argument("--timeout", type=float, default=40.0, help="seconds to wait for the page (default 40)")
    ap.add_argument("--nodes", type=int, default=3, help="graph nodes wanted (default 3)")
    ap.add_argument("--edges", type=int, default=2, help="graph edges wanted (default 2)")
    ap.add_argument("--tap-rows", type=int, default=1, help="tap rows wanted (default 1)")
    ap.add_argument("--full-page", action="store_true", help="screenshot the whole page, not the 1400x1000 viewport")
    opts = ap.parse_args()

    started = time.monotonic()
    # Make SIGTERM/SIGHUP unwind through the finally blocks (kill Chromium, remove the profile).
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    errors = []
    state = {}
    failure = None
    shot_path = None

    def emit():
        out = {
            "ok": failure is None,
            "failure": failure,
            "elapsed_s": round(time.monotonic() - started, 2),
            "nodes": state.get("nodes", []),
            "edges": state.get("edges", []),
            "workloads": state.get("workloads", {}),
            "edge_rows": state.get("edge_rows", 0),
            "tap_rows": state.get("tap_rows", 0),
            "tap_sample": state.get("tap_sample", []),
            "errors": errors,
            "screenshot": shot_path,
        }
        if failure is not None:
            out["last_state"] = {k: state.get(k) for k in ("ready_state", "loaded", "renders", "error_banner", "status")}
        print(json.dumps(out, indent=None, ensure_ascii=False))
        sys.stdout.flush()

    binary, tried = find_chromium(opts.chromium)
    if not binary:
        failure = "no Chromium binary found (tried %s); install it, e.g. apt-get install -y chromium" % ", ".join(tried)
        print("cdp_check: " + failure, file=sys.stderr)
        emit()
        return 1
    if os.path.basename(binary) != os.path.basename(opts.chromium):
        print("cdp_check: %s not found, using %s" % (opts.chromium, binary), file=sys.stderr)

    profile = tempfile.mkdtemp(prefix="cdp_check-")
    log_path = os.path.join(tempfile.gettempdir(), os.path.basename(profile) + ".log")
    browser = None
    try:
        browser = Browser(binary, profile, log_path)

        def on_event(msg):
            m, p = msg.get("method"), msg.get("params", {})
            if m == "Runtime.exceptionThrown":
                errors.append(describe_exception(p))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(describe_console(p))
        browser.on_event = on_event

        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"}, timeout=30)
            sid = browser.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
            browser.send("Page.enable", session=sid)
            browser.send("Runtime.enable", session=sid)
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session=sid)
        except CDPError as e:
            failure = "Chromium did not start a page: %s" % e
            tail = log_tail(log_path)
            if tail:
                failure += "; Chromium output: " + tail
            raise

        deadline = time.monotonic() + opts.timeout
        nav = browser.send("Page.navigate", {"url": opts.url}, session=sid,
                           timeout=max(5.0, opts.timeout))
        if nav.get("errorText"):
            failure = "navigation to %s failed: %s" % (opts.url, nav["errorText"])
            # Let Chromium's error page commit so that the screenshot shows it.
            browser.wait_event(("Page.loadEventFired", "Page.frameStoppedLoading"), 3.0)
        else:
            while True:
                try:
                    res = browser.send("Runtime.evaluate", {"expression": STATE_JS, "returnByValue": True},
                                       session=sid, timeout=max(2.0, min(10.0, deadline - time.monotonic() + 2)))
                    if "exceptionDetails" not in res:
                        state = res.get("result", {}).get("value") or state
                except CDPError as e:
                    if "closed" in str(e):
                        raise
                    # A navigation in progress can destroy the context; try again.
                if (state.get("loaded") == "1"
                        and len(state.get("nodes", [])) >= opts.nodes
                        and len(state.get("edges", [])) >= opts.edges
                        and state.get("tap_rows", 0) >= opts.tap_rows):
                    break
                if time.monotonic() >= deadline:
                    failure = ("timed out after %.0f s waiting for the dashboard: loaded=%s, %d/%d nodes, "
                               "%d/%d edges, %d/%d tap rows%s" % (
                                   opts.timeout, state.get("loaded"), len(state.get("nodes", [])), opts.nodes,
                                   len(state.get("edges", [])), opts.edges, state.get("tap_rows", 0), opts.tap_rows,
                                   ("; page error banner: " + state["error_banner"]) if state.get("error_banner") else ""))
                    break
                time.sleep(0.25)
            browser.drain_events()

        # Screenshot, also after a failure: it shows what the page looked like.
        try:
            params = {"format": "png"}
            if opts.full_page:
                m = browser.send("Page.getLayoutMetrics", session=sid)
                size = m.get("cssContentSize") or m.get("contentSize")
                params.update({"captureBeyondViewport": True, "clip": {
                    "x": 0, "y": 0, "width": max(1, int(size["width"])), "height": max(1, int(size["height"])),
                    "scale": 1}})
            shot = browser.send("Page.captureScreenshot", params, session=sid, timeout=20)
            out = os.path.abspath(opts.screenshot)
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            with open(out, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            shot_path = out
        except (CDPError, OSError, KeyError) as e:
            msg = "screenshot failed: %s" % e
            failure = msg if failure is None else failure + "; " + msg
        browser.drain_events()
    except CDPError as e:
        if failure is None:
            failure = str(e)
            tail = log_tail(log_path)
            if tail:
                failure += "; Chromium output: " + tail
    except OSError as e:
        if failure is None:
            failure = "cannot run %s: %s" % (binary, e)
    finally:
        if browser is not None:
            browser.close()
        shutil.rmtree(profile, ignore_errors=True)
        try:
            os.unlink(log_path)
        except OSError:
            pass

    if failure is not None:
        print("cdp_check: FAILED: " + failure, file=sys.stderr)
    if errors:
        print("cdp_check: page errors:\n  " + "\n  ".join(errors), file=sys.stderr)
    emit()
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
