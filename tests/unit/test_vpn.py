"""WireGuard keys, the overlay plan and `wg show dump` parsing, without a network."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from elastic.adapters.vpn import (KeyStore, keypair, overlay_addresses, parse_dump, public_of,
                                  valid_public)
from elastic.errors import PermanentError


def test_keys_are_what_wg_makes_of_them():
    private, public = keypair()
    assert valid_public(public) and public_of(private) == public and private != public
    if shutil.which("wg"):
        out = subprocess.run(["wg", "pubkey"], input=private + "\n", capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        assert out == public
    with pytest.raises(PermanentError, match="not a WireGuard private key"):
        public_of("bm90IGEga2V5")


def test_the_keystore_keeps_private_keys_to_itself(tmp_path):
    ks = KeyStore(tmp_path / "vpn" / "p")
    path, pub = ks.pair("hub")
    assert ks.pair("hub") == (path, pub)                       # made once
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ks.dir.stat().st_mode) == 0o700
    assert public_of(ks.private("hub")) == pub
    assert ks.pair("worker1")[1] != pub
    ks.forget("worker1")
    assert not ks.path("worker1").exists()
    with pytest.raises(ValueError):
        ks.path("../etc/passwd")


def test_overlay_plan():
    hub, peers = overlay_addresses("10.250.0.0/24")
    assert hub == "10.250.0.1" and peers[0] == "10.250.0.2" and peers[-1] == "10.250.0.254"
    with pytest.raises(PermanentError):
        overlay_addresses("10.250.0.0/32")


DUMP = ("cHJpdmF0ZS1rZXktbmV2ZXItc2hvd24tYW55d2hlcmUhISE=\tc2VydmVy\t51820\toff\n"
        "UEVFUjEgcHVibGljIGtleSBmb3IgdGhlIHRlc3QhISEhISE=\t(none)\t172.31.250.2:44772\t"
        "10.250.0.2/32\t1763790000\t1234\t5678\t25\n"
        "UEVFUjIgcHVibGljIGtleSBmb3IgdGhlIHRlc3QhISEhISE=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")


def test_parse_dump():
    port, peers = parse_dump(DUMP)
    assert port == 51820
    assert [(p.endpoint, p.allowed_ips, p.latest_handshake, p.rx_bytes, p.tx_bytes,
             p.keepalive) for p in peers] == [
        ("172.31.250.2:44772", ("10.250.0.2/32",), 1763790000, 1234, 5678, 25),
        (None, (), 0, 0, 0, None)]
    assert "cHJpdmF0ZS1rZXk" not in repr(peers)                 # the private key is not kept
    assert parse_dump("") == (None, [])
    with pytest.raises(ValueError):
        parse_dump(DUMP.splitlines()[0] + "\nshort\tline\n")
