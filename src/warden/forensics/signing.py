"""The host's evidence-signing key: Ed25519, in WARDEN_HOME/keys (docs/formats/evidence.md).

    keys/evidence-ed25519.pem       the private key, PKCS#8 PEM, mode 0600
    keys/evidence-ed25519.pub.pem   its public key, SubjectPublicKeyInfo PEM

Made on first use, published with link(2) so that two makers at once keep one key.
"""

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from warden import statefile
from warden.errors import WardenError
from warden.paths import Layout

PRIVATE = "evidence-ed25519.pem"
PUBLIC = "evidence-ed25519.pub.pem"


class SigningKeyError(WardenError):
    """A key file is missing, unreadable or not an Ed25519 key."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def describe(key: Ed25519PublicKey) -> dict[str, str]:
    return {
        "algorithm": "ed25519",
        "key_id": key_id(key),
        "public_key": base64.b64encode(raw_public(key)).decode(),
    }


def from_description(d: object) -> Ed25519PublicKey:
    """The public key of a manifest's `signer`; ValueError if it is not one."""
    if not isinstance(d, dict) or d.get("algorithm") != "ed25519":
        raise ValueError("signer: not an ed25519 key description")
    try:
        raw = base64.b64decode(str(d.get("public_key", "")), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValueError("signer: public_key is not 32 bytes of base64") from None


def host_key(layout: Layout) -> Ed25519PrivateKey:
    """This home's signing key, made on first use."""
    path = layout.keys / PRIVATE
    if not path.exists():
        layout.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        new = Ed25519PrivateKey.generate()
        pem = new.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        statefile.create_once(path, pem, 0o600)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except PermissionError:
        raise SigningKeyError(f"{path}: cannot read the evidence key (run as root)") from None
    except ValueError as e:
        raise SigningKeyError(f"{path}: not a PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key")
    pub = layout.keys / PUBLIC
    if not pub.exists():
        statefile.create_once(pub, public_pem(key.public_key()), 0o644)
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise SigningKeyError(f"{path}: no such key file") from None
    except ValueError as e:
        raise SigningKeyError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: not an Ed25519 public key")
    return key


def pinned(layout: Layout, given: Path | None) -> Ed25519PublicKey | None:
    """The key a signature must be made with: --key, else this home's public key."""
    if given is not None:
        return load_public(given)
    pub = layout.keys / PUBLIC
    return load_public(pub) if pub.exists() else None


def valid(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
