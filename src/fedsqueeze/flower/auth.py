"""SuperNode authentication keys: which devices may join a federation.

Flower 1.41 authenticates SuperNodes by key pair. The SuperLink runs with ``--enable-supernode-auth``
(which needs TLS) and then accepts only SuperNodes whose public key was registered beforehand with
``flwr supernode register KEY.pub CONNECTION`` (the Control API, as whoever runs ``flwr``); each
SuperNode signs its requests with its private key (``flower-supernode --auth-supernode-private-key
KEY``). An unregistered or keyless SuperNode is refused (Flower exit code 305) and never gets work.

``make_supernode_keys(dir, n)`` writes ``supernode-<i>.key`` (OpenSSH private key, mode 600: stays on
device ``i``) and ``supernode-<i>.pub`` (OpenSSH public key: registered on the SuperLink) for ``i < n``,
on the NIST P-384 curve Flower requires.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeKey:
    private: Path
    public: Path


def make_supernode_key(private: str | Path) -> NodeKey:
    """One key pair: ``private`` and the same path with ``.pub``."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    out = NodeKey(Path(private), Path(private).with_suffix(".pub"))
    out.private.parent.mkdir(parents=True, exist_ok=True)
    out.private.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
    out.private.chmod(0o600)
    out.public.write_bytes(key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b"\n")
    return out


def make_supernode_keys(directory: str | Path, count: int) -> list[NodeKey]:
    return [make_supernode_key(Path(directory) / f"supernode-{i}.key") for i in range(count)]
