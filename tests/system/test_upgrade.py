"""`elastic upgrade`: a chunk moves hosts by live migration and keeps running; sizes change."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from tests.system.test_up import (elastic, host_conn, host_domains, host_volumes, lab_host,
                                   status, write_spec)

pytestmark = [pytest.mark.system]

INTERVAL = 0.2
SPEC = """
project: mover
networks:
  net: {{cidr: 10.34.0.0/24}}
classes:
  n:
    image: tiny
    memory: 128M
    host: {host}
    interfaces: {{eth0: {{network: net}}}}
    startup:
      - (while :; do echo "UP $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done) &
nodes:
  a:
    class: n
    startup:
      - (while :; do echo "UP $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done) &
      - (ping -i {interval} 10.34.0.3 | while read l; do echo "PING $l"; done) &
  b:
    class: n
    memory: {b_memory}
    interfaces: {{eth0: {{address: 10.34.0.3}}}}
"""


# a domain named like b, defined (not running) on h2, so that b's migration there fails
SQUATTER = """<domain type='qemu'><name>b.mover</name><memory unit='MiB'>64</memory>
<os><type>hvm</type></os></domain>"""


def _seqs(text: str) -> set[int]:
    return {int(m) for m in re.findall(r"PING 64 bytes from [0-9.]+: seq=(\d+)", text)}


def forwarding_gap(seqs: set[int], interval: float) -> tuple[float, int]:
    """(longest time without a reply, pings lost) from the sequence numbers that came back."""
    missing = sorted(set(range(min(seqs), max(seqs) + 1)) - seqs)
    longest = run = 0
    prev = None
    for s in missing:
        run = run + 1 if prev is not None and s == prev + 1 else 1
        longest = max(longest, run)
        prev = s
    return (longest + 1) * interval, len(missing)


def _uptimes(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"^UP (\d+\.\d+)", text, re.M)]


def test_upgrade_live_migrates_a_chunk_and_it_keeps_running(lab, tmp_path):
    from elastic.adapters.providers.libvirt import LibvirtHost
    state = tmp_path / "state"
    spec = write_spec(tmp_path, lab, SPEC.format(host="h1", interval=INTERVAL, b_memory="128M"))
    h1 = LibvirtHost("h1", lab_host(lab, "h1").uri)
    h2 = LibvirtHost("h2", lab_host(lab, "h2").uri)
    try:
        elastic(state, "up", str(spec))
        # let the pings run a little before moving
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_seqs(
                h1.read_volume("mover-a.console.log").decode(errors="replace"))) < 10:
            time.sleep(0.5)
        spec.write_text(spec.read_text().replace("host: h1", "host: h2"))
        dry = json.loads(elastic(state, "upgrade", "--dry-run", str(spec), "-o", "json").stdout)
        assert [(c["kind"], c["target"], c["src"], c["dst"]) for c in dry["changes"]] == \
            [("move", "net", "h1", "h2")]
        assert sorted(host_domains(lab, "h1")) == ["a.mover", "b.mover"]   # dry run: unchanged
        # first, h2 refuses b (a domain of that name is already defined there): a goes and
        # comes back, so the chunk stays whole on h1, and nothing of it is left on h2
        up_first = max(_uptimes(h1.read_volume("mover-a.console.log").decode(errors="replace")))
        with host_conn(lab, "h2") as conn:
            squatter = conn.defineXML(SQUATTER)
        try:
            failed = elastic(state, "upgrade", str(spec), check=False)
            assert failed.returncode != 0
            assert "chunk net stays on h1: b:" in failed.stdout + failed.stderr, failed
            assert sorted(d for d in host_domains(lab, "h1") if d.endswith(".mover")) == \
                ["a.mover", "b.mover"]
            assert host_domains(lab, "h2") == ["b.mover"]            # only the squatter
            assert not [v for v in host_volumes(lab, "h2") if v.startswith("mover-")]
            with host_conn(lab, "h2") as conn:
                assert "elastic-mover-net" not in [n.name() for n in conn.listAllNetworks()]
            nodes = {n["name"]: n for n in status(state, "mover")["nodes"]}
            assert {n: (v["state"], v["host"]) for n, v in nodes.items()} == \
                {"a": ("RUNNING", "h1"), "b": ("RUNNING", "h1")}
        finally:
            squatter.undefine()
        time.sleep(2)
        back = h1.read_volume("mover-a.console.log").decode(errors="replace")
        assert _uptimes(back)[-1] > up_first + 1, "a rebooted instead of coming back"
        # a's pings while it was on h2 went to h2's console log, now gone: the gap of the
        # real move below is measured from here on
        mark = max(_seqs(back))
        # keep what a printed on h1 until its log is gone, to see the pings before the move
        before: dict[str, str] = {"log": ""}
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                try:
                    text = h1.read_volume("mover-a.console.log").decode(errors="replace")
                    if text:
                        before["log"] = text
                except Exception:
                    pass
                time.sleep(0.1)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        uptime_before = max(_uptimes(before["log"] or h1.read_volume(
            "mover-a.console.log").decode(errors="replace")) or [0.0])
        result = json.loads(elastic(state, "upgrade", str(spec), "-o", "json").stdout)
        stop.set()
        watcher.join()
        assert result["migrations"].keys() == {"net"}
        assert not [d for d in host_domains(lab, "h1") if d.endswith(".mover")]
        assert sorted(d for d in host_domains(lab, "h2") if d.endswith(".mover")) == \
            ["a.mover", "b.mover"]
        nodes = {n["name"]: n for n in status(state, "mover")["nodes"]}
        assert {n: (v["state"], v["host"]) for n, v in nodes.items()} == \
            {"a": ("RUNNING", "h2"), "b": ("RUNNING", "h2")}
        # the guest kept running: its uptime goes on from where it was, and a still reaches b
        time.sleep(3)
        after = h2.read_volume("mover-a.console.log").decode(errors="replace")
        assert min(_uptimes(after)) >= uptime_before, "a rebooted instead of moving"
        seqs = {s for s in _seqs(before["log"]) | _seqs(after) if s > mark}
        assert max(seqs) > max(_seqs(before["log"])) + 5, "no pings after the move"
        gap, lost = forwarding_gap(seqs, INTERVAL)
        print(f"\nchunk of 2 migrated h1 -> h2 in {result['migrations']['net']:.1f} s; "
              f"private network forwarding gap {gap:.1f} s ({lost} pings lost)")
        assert gap < 30
        # a second upgrade has nothing to do
        again = json.loads(elastic(state, "upgrade", "--dry-run", str(spec), "-o", "json").stdout)
        assert again["changes"] == []
        # resize b in place: it restarts with its new memory, a is untouched
        spec.write_text(spec.read_text().replace("memory: 128M\n    interfaces: {eth0: {address",
                                                 "memory: 192M\n    interfaces: {eth0: {address"))
        result = json.loads(elastic(state, "upgrade", str(spec), "-o", "json").stdout)
        assert [(c["kind"], c["target"]) for c in result["changes"]] == [("resize", "b")]
        assert sorted(result["running"]) == ["a", "b"]
        with host_conn(lab, "h2") as conn:
            assert conn.lookupByName("b.mover").info()[1] == 192 * 1024
        # add a node, then remove it again
        with_c = spec.read_text() + "  c: {class: n}\n"
        spec.write_text(with_c)
        result = json.loads(elastic(state, "upgrade", str(spec), "-o", "json").stdout)
        assert [(c["kind"], c["target"], c["dst"]) for c in result["changes"]] == \
            [("add", "c", "h2")]
        assert "c.mover" in host_domains(lab, "h2")
        spec.write_text(with_c.replace("  c: {class: n}\n", ""))
        result = json.loads(elastic(state, "upgrade", str(spec), "-o", "json").stdout)
        assert [(c["kind"], c["target"]) for c in result["changes"]] == [("remove", "c")]
        assert "c.mover" not in host_domains(lab, "h2")
        assert "c" not in {n["name"] for n in status(state, "mover")["nodes"]}
    finally:
        h1.close()
        h2.close()
        elastic(state, "down", "mover", check=False)
