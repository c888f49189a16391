"""Request signers: HMAC-SHA256 (hex), and Ed25519 / RSA private keys (base64, URL-encoded).

Binance general-info: HMAC signs the exact query string and sends hex; RSA (PKCS#1 v1.5,
SHA-256) and Ed25519 (RFC 8032, as Binance's own SDK signs REST) send base64, which
must be percent-encoded in the query because it contains + / =.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from recorder.errors import ConfigError

Signer = Callable[[str], str]


def sign_hmac(secret: str, payload: str) -> str:
    """Hex HMAC-SHA256 of the exact query string, as Binance's general-info specifies."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def hmac_signer(secret: str) -> Signer:
    """A signer for an API secret."""
    # The key's padded digests are computed once; each signature copies them (as sign_hmac's result).
    keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def sign(payload: str) -> str:
        mac = keyed.copy()
        mac.update(payload.encode())
        return mac.hexdigest()

    return sign


def key_signer(pem: bytes, passphrase: str | None = None) -> Signer:
    """A signer for an Ed25519 or RSA private key in PEM (PKCS#8); the value is URL-encoded base64."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

    try:
        key = serialization.load_pem_private_key(pem, password=passphrase.encode() if passphrase else None)
    except TypeError:
        raise ConfigError(
            "the private key is encrypted: set BINANCE_PRIVATE_KEY_PASSPHRASE"
            if not passphrase
            else "the private key is not encrypted: unset BINANCE_PRIVATE_KEY_PASSPHRASE"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # cryptography's message can quote key material; ours never does.
        raise ConfigError("cannot read the private key: not a PEM private key, or a wrong passphrase") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sign = key.sign
    elif isinstance(key, rsa.RSAPrivateKey):
        def sign(payload: bytes) -> bytes:
            return key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise ConfigError("the private key must be Ed25519 or RSA (Binance accepts no other type)")
    return lambda payload: quote(base64.b64encode(sign(payload.encode())).decode(), safe="")


def read_private_file(path: str, what: str) -> bytes:
    """Read a secret-bearing file, refusing one that other users can read."""
    file = Path(path).expanduser()
    try:
        status = file.stat()
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {file}: {exc.strerror}") from None
    if os.name == "posix" and status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {file} is readable by other users (mode {stat.S_IMODE(status.st_mode):o}): run chmod 600 {file}"
        )
    return data
