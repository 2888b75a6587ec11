"""elastic's own SSH keys: one Ed25519 key pair per project in the state directory, made on
first use. Its public half goes into the batch master's root ``authorized_keys`` through the
context, so that the controller can reach the master without anyone copying keys around.

    pub = ensure_key(state_dir / "keys" / "sge")      # "ssh-ed25519 AAAA... elastic@sge"
"""

from __future__ import annotations

import os
from pathlib import Path

from elastic.errors import PermanentError


def write_private(path: Path, data: bytes) -> bool:
    """Create ``path`` (mode 0600, its directory 0700 if new) holding ``data``, only if it
    does not exist: False when someone made it first (theirs is the key, as with two
    processes making the same key at once)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def public_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def ensure_key(private: Path, comment: str = "elastic") -> str:
    """The OpenSSH public key line of the key at ``private``, making the pair (mode 0600)
    if it does not exist. Concurrent callers get the same key (the file is created
    exclusively and the loser reads the winner's)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = public_path(private)
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()
        if write_private(private, pem):
            tmp = pub.with_name(pub.name + ".tmp")
            tmp.write_text(f"{line} {comment}\n")
            tmp.replace(pub)
    return read_public(private)


def read_public(private: Path) -> str:
    """The public key line of ``private`` (from its .pub, else derived from the key)."""
    from cryptography.hazmat.primitives import serialization

    pub = public_path(private)
    if pub.exists():
        text = pub.read_text().strip()
        if text:
            return text
    try:
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise PermanentError(f"{private}: not a usable SSH private key: {e}") from None
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
