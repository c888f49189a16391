"""The accounts file: parsed into one Settings per account, every error one line naming the line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from recorder.accounts import load_accounts_file
from recorder.config import Settings
from recorder.errors import ConfigError

GOOD = """\
database_url = "sqlite:///fleet.db"
weight_limit = 1200

[defaults]
endpoint = "v3"
interval = 30

[[accounts]]
label = "alice"
api_key_env = "ALICE_KEY"
api_secret_env = "ALICE_SECRET"

[[accounts]]
label = "bob"
api_key_env = "BOB_KEY"
api_secret_env = "BOB_SECRET"
interval = 90
endpoint = "v2"
base_url = "http://127.0.0.1:9/"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return str(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_accounts_file(write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_accounts_file_merges_defaults_and_resolves_credentials(tmp_path):
    accounts = load_accounts_file(write(tmp_path, GOOD))
    assert [entry.label for entry in accounts.accounts] == ["alice", "bob"]
    assert accounts.process == {"database_url": "sqlite:///fleet.db", "weight_limit": 1200}
    alice, bob = accounts.accounts
    process = Settings(database_url="sqlite:///fleet.db", weight_limit=1200)
    environ = {"ALICE_KEY": "ak", "ALICE_SECRET": "as", "BOB_KEY": "bk", "BOB_SECRET": "bs"}
    first, second = alice.settings(environ, process), bob.settings(environ, process)
    assert (first.account, first.api_key, first.api_secret, first.endpoint, first.interval) == ("alice", "ak", "as", "v3", 30)
    assert (second.account, second.endpoint, second.interval, second.base_url) == ("bob", "v2", 90, "http://127.0.0.1:9")
    assert first.weight_limit == 1200 and first.database_url == "sqlite:///fleet.db"
    assert alice.credential_source == "env ALICE_KEY + env ALICE_SECRET"


def test_accounts_file_secret_file_is_read_only_when_settings_are_built(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    text = f'[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_file = "{secret}"\n'
    accounts = load_accounts_file(write(tmp_path, text))
    secret.unlink()  # listing never needs it
    assert accounts.accounts[0].credential_source == f"env K + file {secret}"
    with pytest.raises(ConfigError, match="secret file"):
        accounts.accounts[0].settings({"K": "key"}, Settings())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_env = "S"\ninterval = 0.01\n',
         "line 5: accounts[0].interval: must be at least 0.2 s"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_env = "S"\n\n[[accounts]]\nlabel = "b"\n'
         'api_key_env = "K"\napi_secret_env = "S"\ncolour = "red"\n', "line 10: accounts[1]: unknown key 'colour'"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_env = "S"\n[[accounts]]\nlabel = "a"\n'
         'api_key_env = "K2"\napi_secret_env = "S2"\n', "line 6: duplicate label 'a'"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret = "hunter2"\n',
         "line 4: accounts[0]: api_secret is a secret written into the file"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_env = "S"\nendpoint = "v9"\n',
         "line 5: accounts[0].endpoint: must be v2 or v3"),
        ('[defaults]\ninterval = "soon"\n[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_env = "S"\n',
         "line 2: defaults.interval must be a number"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K"\n', "line 1: account 'a' needs exactly one of"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_env = "S"\nprivate_key_path = "/k.pem"\n',
         "line 5: account 'a' needs exactly one of api_secret_env, api_secret_file, private_key_path "
         "(found api_secret_env and private_key_path)"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_env = "S"\nbase_url = "ftp://x"\n',
         "line 5: accounts[0].base_url: must be an http(s) URL"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "not a name"\napi_secret_env = "S"\n',
         "line 3: account 'a': api_key_env must name an environment variable"),
        ('database_url = "mysql://x"\n[[accounts]]\nlabel = "a"\napi_key_env = "K"\napi_secret_env = "S"\n',
         "line 1: database_url: must be sqlite:///PATH"),
        ('label = "a"\n', "line 1: top level: unknown key 'label'"),
        ("[defaults]\n", "the file needs at least one [[accounts]] table"),
        ('[[accounts]]\nlabel = "a"\napi_key_env = "K\n', "not valid TOML: "),
    ],
)
def test_accounts_file_errors_name_the_line_and_key(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert expected in message
    assert str(tmp_path / "accounts.toml") in message
    assert "hunter2" not in message


def test_accounts_file_syntax_error_gives_tomllib_position(tmp_path):
    message = error_of(tmp_path, '[[accounts]]\nlabel = "a"\napi_key_env = = "K"\n')
    assert "line 3" in message


def test_accounts_file_missing_environment_variable_names_it(tmp_path):
    accounts = load_accounts_file(write(tmp_path, GOOD))
    with pytest.raises(ConfigError) as caught:
        accounts.accounts[1].settings({"BOB_SECRET": "x"}, Settings())
    assert "line 13" in str(caught.value) and "BOB_KEY is not set" in str(caught.value)


def test_accounts_file_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the accounts file"):
        load_accounts_file(str(tmp_path / "absent.toml"))
