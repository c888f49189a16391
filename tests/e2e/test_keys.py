"""Ed25519 and RSA private keys, and secrets read from files, end to end through `recorder poll`."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.e2e.test_cli_recording import recorder, stored

KEY_ACCOUNT = "key-account-api-key"


def write_key(path, private_key, passphrase: bytes | None = None, mode: int = 0o600):
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    path.write_bytes(
        private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    os.chmod(path, mode)
    return path


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(params=["ed25519", "rsa"])
def private_key(request):
    if request.param == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_env(cli_env, path, **extra):
    env = {k: v for k, v in cli_env.items() if k != "BINANCE_API_SECRET"}
    env.update(BINANCE_API_KEY=KEY_ACCOUNT, BINANCE_PRIVATE_KEY_PATH=str(path), **extra)
    return env


def test_private_key_signs_requests_the_server_verifies(simulator, cli_env, db_url, tmp_path, private_key):
    simulator.add_account(api_key=KEY_ACCOUNT, public_key_pem=public_pem(private_key), account_alias="Keyed")
    path = write_key(tmp_path / "key.pem", private_key)
    result = recorder("poll", env=key_env(cli_env, path))
    assert result.returncode == 0, result.stderr
    balances, polls = stored(db_url)
    assert len(balances) == 8 and polls[0].outcome == "ok"


def test_encrypted_private_key_needs_its_passphrase(simulator, cli_env, db_url, tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    simulator.add_account(api_key=KEY_ACCOUNT, public_key_pem=public_pem(key), account_alias="Keyed")
    path = write_key(tmp_path / "key.pem", key, passphrase=b"pass-canary-991")
    missing = recorder("poll", env=key_env(cli_env, path))
    assert missing.returncode == 2
    assert "the private key is encrypted: set BINANCE_PRIVATE_KEY_PASSPHRASE" in missing.stderr
    ok = recorder("poll", env=key_env(cli_env, path, BINANCE_PRIVATE_KEY_PASSPHRASE="pass-canary-991"))
    assert ok.returncode == 0, ok.stderr
    assert "pass-canary-991" not in ok.stdout + ok.stderr + missing.stderr


def test_key_of_another_account_is_an_auth_failure(simulator, cli_env, db_url, tmp_path):
    simulator.add_account(
        api_key=KEY_ACCOUNT, public_key_pem=public_pem(ed25519.Ed25519PrivateKey.generate()), account_alias="Keyed"
    )
    path = write_key(tmp_path / "key.pem", ed25519.Ed25519PrivateKey.generate())
    result = recorder("poll", env=key_env(cli_env, path))
    assert result.returncode == 1
    assert "AuthError" in result.stderr and "-1022" in result.stderr
    assert stored(db_url)[0] == []


def test_key_or_secret_file_readable_by_others_is_refused(simulator, cli_env, db_url, tmp_path):
    path = write_key(tmp_path / "key.pem", ed25519.Ed25519PrivateKey.generate(), mode=0o644)
    result = recorder("poll", env=key_env(cli_env, path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: ConfigError: the private key file {path} is readable by other users (mode 644): run chmod 600 {path}"
    )
    secret_file = tmp_path / "secret"
    secret_file.write_text(cli_env["BINANCE_API_SECRET"] + "\n")
    os.chmod(secret_file, 0o640)
    env = {k: v for k, v in cli_env.items() if k != "BINANCE_API_SECRET"}
    refused = recorder("poll", env={**env, "BINANCE_API_SECRET_FILE": str(secret_file)})
    assert refused.returncode == 2 and "readable by other users (mode 640)" in refused.stderr
    os.chmod(secret_file, 0o600)
    accepted = recorder("poll", env={**env, "BINANCE_API_SECRET_FILE": str(secret_file)})
    assert accepted.returncode == 0, accepted.stderr
    assert simulator.requests_log  # nothing was sent before the refusals: only the accepted poll
    assert cli_env["BINANCE_API_SECRET"] not in accepted.stdout + accepted.stderr + refused.stderr
