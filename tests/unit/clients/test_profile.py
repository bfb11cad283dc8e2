"""Where the CLI finds the coordinator and credentials: flags, then the environment, then the client config file,
then the local cluster; bad files refused by name; tokens never printed."""

from __future__ import annotations

import pytest

from alignmesh.clients import profile
from alignmesh.services.common.errors import ConfigError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in (profile.ADDRESS_ENV, profile.TOKEN_ENV, profile.CONFIG_ENV):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "alignmesh").mkdir()
    return tmp_path


def write(home, text: str, mode: int = 0o600):
    path = home / "alignmesh" / "client.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_precedence_flag_env_file_default(home, monkeypatch):
    state = str(home / "no-cluster")
    assert profile.resolve(state_dir=state).address_source == "the default"
    path = write(home, "coordinator: from-file:1\n")
    p = profile.resolve(state_dir=state)
    assert (p.address, p.address_source) == ("from-file:1", str(path))
    monkeypatch.setenv(profile.ADDRESS_ENV, "from-env:2")
    assert profile.resolve(state_dir=state).address == "from-env:2"
    assert profile.resolve("from-flag:3", state_dir=state).address == "from-flag:3"


def test_token_from_a_private_token_file_and_never_described(home, monkeypatch):
    token = home / "token"
    token.write_text("tok-0123456789\n")
    token.chmod(0o600)
    write(home, f"token_file: {token}\n", mode=0o644)  # the config itself holds no secret: may be readable
    p = profile.resolve(state_dir=str(home))
    assert p.token == "tok-0123456789" and p.token_source == str(token)
    assert "tok-" not in p.describe() and f"token from {token}" in p.describe()
    monkeypatch.setenv(profile.TOKEN_ENV, "env-token")
    assert profile.resolve(state_dir=str(home)).token_source == f"${profile.TOKEN_ENV}"
    assert profile.resolve(token="flag-token", state_dir=str(home)).token == "flag-token"


def test_secrets_readable_by_others_are_refused_with_the_fix(home):
    token = home / "token"
    token.write_text("tok")
    token.chmod(0o644)
    write(home, f"token_file: {token}\n")
    with pytest.raises(ConfigError, match=f"others can read it: chmod 600 {token}"):
        profile.resolve(state_dir=str(home))
    path = write(home, "token: inline-token\n", mode=0o640)
    with pytest.raises(ConfigError, match=f"{path} holds a token but others can read it"):
        profile.resolve(state_dir=str(home))


def test_tls_from_the_file_and_flags_win_as_a_set(home):
    for name in ("ca.pem", "c.pem", "c.key", "flag-ca.pem"):
        (home / name).write_bytes(name.encode())
    write(home, f"tls_ca: {home / 'ca.pem'}\ntls_cert: {home / 'c.pem'}\ntls_key: {home / 'c.key'}\n")
    p = profile.resolve(state_dir=str(home))
    assert (p.tls_ca, p.tls_cert, p.tls_key) == (b"ca.pem", b"c.pem", b"c.key")
    assert p.describe().endswith(f"TLS from {home / 'alignmesh' / 'client.yaml'}")
    p = profile.resolve(tls_ca=str(home / "flag-ca.pem"), state_dir=str(home))
    assert (p.tls_ca, p.tls_cert, p.tls_source) == (b"flag-ca.pem", None, "flags")


@pytest.mark.parametrize("text, message", [
    ("coordinator: [a]\n", "coordinator must be a non-empty string"),
    ("tokn: x\n", "unknown key 'tokn'; known keys: coordinator, token, token_file"),
    ("- a\n", "top level must be a mapping"),
    ("a: [\n", "not valid YAML"),
    ("tls_cert: /nonexistent/c.pem\n", "give both tls_cert and tls_key"),
    ("tls_ca: /nonexistent/ca.pem\n", "tls_ca /nonexistent/ca.pem .*no such file"),
])
def test_bad_client_configs_are_named(home, text, message):
    write(home, text)
    with pytest.raises(ConfigError, match=message):
        profile.resolve(state_dir=str(home))


def test_an_explicit_config_path_must_exist(home, monkeypatch):
    monkeypatch.setenv(profile.CONFIG_ENV, str(home / "missing.yaml"))
    with pytest.raises(ConfigError, match=f"from \\${profile.CONFIG_ENV}\\): no such file"):
        profile.resolve(state_dir=str(home))
