"""What the browser tests share: Debian's Chromium with no network but loopback, the skip that says how to enable
them, a free port, and stopping a served page's process group."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # resolve no host name except loopback (Voilà's page asks a CDN for a font stylesheet)
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
LOOPBACK = ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")
HOW = ("install Debian's chromium (`apt-get install chromium`, not `playwright install`) and "
       "`pip install voila playwright` (both in gazekit's [test] extra)")


def requirements_missing() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM}: {HOW}"
    for mod in ("playwright", "voila"):
        try:
            __import__(mod)
        except ImportError:
            return f"Python package {mod!r} missing: {HOW}"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM our own server by pid (Voilà shuts its kernels down), then SIGKILL whatever is left of its process
    group (started with start_new_session, so the group id is the child's pid)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def served(cmd, *, cwd, env, log, port: int, what: str):
    """Start `cmd` (a Voilà server on `port`) in its own process group, logging to `log`; yield its URL once it
    serves a static file (ready without starting a kernel, up to 90 s); stop it after, printing its log's tail if
    it ended badly."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited rc={proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "voila/static/voila.js", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not ready after 90 s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        stop(proc)
        if proc.returncode not in (0, -signal.SIGTERM, None):
            print(log.read_text()[-3000:])
