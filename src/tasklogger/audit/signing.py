"""Ed25519 signatures over digests and checkpoints (``cryptography``).

A signed record carries ``key_id`` and then ``signature`` as its last members before ``hash``. The signature covers
``b"tasklogger-signature-v1\\0"`` followed by the record's canonical bytes without the ``signature`` member (cut off
the bytes, never re-serialised), so it binds every other member, ``seq`` and the previous hash included.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_CONTEXT = b"tasklogger-signature-v1\x00"
_SIG_SUFFIX = re.compile(rb',"signature":"([0-9a-f]{128})"\}$')


class KeyFileError(ValueError):
    """Raised when a key file cannot be read or is not an Ed25519 key of the expected kind."""


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 bytes of SHA-256 over its raw 32 bytes, in hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


class Signer:
    """An Ed25519 private key and its key id."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)
        #: The raw 32 private bytes, handed to the store's writer process (which signs the digests).
        self.raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @classmethod
    def from_raw(cls, raw: bytes) -> Signer:
        """The signer of raw private key bytes (``Signer.raw``)."""
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def sign_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with ``key_id`` and ``signature`` appended (``body`` must not hold ``hash``)."""
        unsigned = {**body, "key_id": self.key_id}
        signature = self.private.sign(SIGNATURE_CONTEXT + orjson.dumps(unsigned))
        return {**unsigned, "signature": signature.hex()}

    def public_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo)."""
        return public_pem(self.public)


def public_pem(public: Ed25519PublicKey) -> bytes:
    """A public key as PEM (SubjectPublicKeyInfo)."""
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_signer(path: Path) -> Signer:
    """The signer of a PEM Ed25519 private key file; raises KeyFileError with one clear reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return Signer(key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM Ed25519 public key (a private key file is accepted too: its public half is used)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from None
    return parse_public_key(data, str(path))


def parse_public_key(data: bytes, name: str) -> Ed25519PublicKey:
    """Parse PEM bytes as an Ed25519 public key (or the public half of a private key)."""
    try:
        key: Any = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise KeyFileError(f"{name} is not a PEM Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{name} is not an Ed25519 key")
    return key


def generate(path: Path) -> Signer:
    """Write a new private key to ``path`` (mode 0600, never overwriting) and its public key to ``path.pub``."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    signer = Signer(private)
    Path(f"{path}.pub").write_bytes(signer.public_pem())
    return signer


def check_signature(canonical: bytes, body: dict[str, Any], public: Ed25519PublicKey | None) -> str | None:
    """What is wrong with a record's signature, or None. With no key, only the form is checked."""
    match = _SIG_SUFFIX.search(canonical)
    if match is None or not isinstance(body.get("key_id"), str):
        return "not signed" if public is not None else None
    if public is None:
        return None
    if body["key_id"] != key_id(public):
        return f"signed by key {body['key_id']}, not by the given public key {key_id(public)}"
    unsigned = canonical[: match.start()] + b"}"
    try:
        public.verify(bytes.fromhex(match.group(1).decode()), SIGNATURE_CONTEXT + unsigned)
    except InvalidSignature:
        return "signature does not verify"
    return None
