"""The status page in a real browser: headless Chromium loads the page that `elastic serve`
serves on 127.0.0.1 for a state DB filled here, and both what it parsed (--dump-dom) and what it drew
(--screenshot) are checked. The screenshot must show the chart's series in their colours:
a page whose chart failed to draw fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from elastic.lifecycle import State
from elastic.server.page import COLOURS
from elastic.state import Store

# alongside: only namespaces and loopback ports of its own, no guests (see tests/conftest.py)
pytestmark = [pytest.mark.system, pytest.mark.alongside]

TIMEOUT = 60.0
WIDTH, HEIGHT = 1200, 1600
NODES = ("head", "worker1", "worker2", "worker3", "burst1")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("needs chromium (Debian's package chromium: apt-get install chromium)")
    return found


def fill(state_dir: Path, now: float) -> None:
    with Store.open(state_dir) as s:
        s.put_project("sge", "/specs/sge.yaml", "h1", now - 7 * 3600, data={
            "queue": {"known": True, "at": now - 10, "pending_jobs": 9, "pending_slots": 18,
                      "running_jobs": 4, "held": 0, "errored": 0},
            "tiers": {"frontend": {"group": "web", "serving": ["head"],
                                   "last": {"at": now - 20, "reason": "requests 3.0/s below 50/s",
                                            "values": [3.0]}}},
            "clouds": {"ec2": {"spec": {"prices": {"t3.medium": 0.05}}}}})
        # a host whose probe answers from libvirt's test driver (or fails where libvirt
        # is missing: the page shows that too)
        s.put_host("node1", "test:///default", now - 7 * 3600, domain_type="test",
                   memory=8192, vcpus=8)
        for i, name in enumerate(NODES[:-1]):
            s.add_node("sge", name, now - 6 * 3600 + i * 600, host="node1",
                       data={"memory": 1024, "vcpus": 1, "chunk": "chunk0", "group":
                             "head" if name == "head" else "workers"},
                       reason="in /specs/sge.yaml; placed on node1")
            for state in (State.PROLOG, State.BOOT, State.RUNNING):
                s.transition("sge", name, state, f"{name} to {state}",
                             now - 6 * 3600 + i * 600 + 60)
        s.add_node("sge", "burst1", now - 3600, site="ec2", data={"group": "workers"})
        s.transition("sge", "burst1", State.PROLOG, "enrolled", now - 3500)
        s.transition("sge", "burst1", State.BOOT, "instance i-0b1 (t3.medium) starting on "
                     "clouds.ec2", now - 3400, provider_id="i-0b1", host="i-0b1")
        s.record_event("sge", "decision:add", now - 3600, node="burst1",
                       reason="<script>alert(1)</script> 9 jobs waiting, private hosts full")
        t = now - 6 * 3600
        i = 0
        while t <= now:
            pending = (i * 7) % 23
            s.add_queue_sample("sge", t, pending_jobs=pending, pending_slots=2 * pending,
                               running_jobs=4, workers={"private": 1 + (i // 12) % 4,
                                                        "ec2": (i // 8) % 4})
            t += 300
            i += 1


@contextlib.contextmanager
def serve(state_dir: Path, tmp: Path, project: str = "sge") -> Iterator[str]:
    """`elastic serve` (the real command, in a subprocess) on a free port of 127.0.0.1;
    the URL of its status page for ``project``."""
    import socket
    import sys
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "elastic.cli.main", "--state-dir",
                             str(state_dir), "serve", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"elastic serve did not answer:\n{(tmp / 'serve.log').read_text()}")
            time.sleep(0.2)
        yield f"{base}/?project={project}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def run_chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium with a profile of its own under ``tmp``; killed (its whole process group)
    if it takes longer than TIMEOUT."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={WIDTH},{HEIGHT}", "--force-device-scale-factor=1",
           f"--user-data-dir={tmp / 'profile'}", "--no-first-run",
           "--no-default-browser-check", "--disable-extensions",
           "--disable-background-networking", "--disable-dev-shm-usage", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"chromium did not finish in {TIMEOUT:g} s: {' '.join(cmd)}\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def near(rgb, colour: str, tolerance: int = 30):
    """A mask of the pixels within ``tolerance`` (per channel) of ``colour`` ('#rrggbb')."""
    target = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    mask = None
    for channel, value in enumerate(target):
        m = abs(rgb[..., channel].astype(int) - value) <= tolerance
        mask = m if mask is None else mask & m
    return mask


def load_rgb(path: Path):
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        image = pytest.importorskip("matplotlib.image", reason="needs Pillow or matplotlib "
                                    "to read the screenshot")
        return (image.imread(str(path))[..., :3] * 255).round().astype(int)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_chromium_renders_the_status_page(tmp_path: Path) -> None:
    binary = chromium()
    state_dir = tmp_path / "state"
    fill(state_dir, time.time())
    with serve(state_dir, tmp_path) as url:
        dom = run_chromium(binary, tmp_path, "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = tmp_path / "page.png"
        done = run_chromium(binary, tmp_path, f"--screenshot={shot}", url)
        assert done.returncode == 0, done.stderr[-2000:]

    # what the browser parsed
    html = dom.stdout
    for name in NODES:
        assert f"{name}.sge" in html, name
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="timeline"' in html
    for series in ("queue", "private", "cloud"):
        assert f'class="series {series}"' in html
    assert "<script>alert(1)</script>" not in html      # the event's reason is text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 9 jobs waiting" in html
    assert "9 jobs (18 slots) pending, 4 running" in html

    # what it drew
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = load_rgb(shot)
    assert rgb.shape[:2] == (HEIGHT, WIDTH)
    white = (rgb >= 245).all(axis=-1)
    assert (~white).mean() > 0.02, "the screenshot is (nearly) blank"
    assert len({tuple(p) for p in rgb.reshape(-1, 3)[::5]}) > 30, "the screenshot is flat"
    for key in ("queue", "private", "cloud"):
        mask = near(rgb, COLOURS[key])
        count = int(mask.sum())
        columns = int(mask.any(axis=0).sum())
        rows = mask.any(axis=1).nonzero()[0]
        # the legend's swatch (16 x 10 pixels) and the dot at the last point are all there
        # is of a colour whose series was not drawn: a series is hundreds of pixels wide
        assert count > 600, f"{key} ({COLOURS[key]}): only {count} pixels of its colour"
        assert columns > 400, f"{key}: its colour is in only {columns} pixel columns"
        assert rows.max() - rows.min() > 30, f"{key}: a flat line, not the series"
