"""Where the job verbs find the coordinator and their credentials.

Each setting comes from the first of: a command-line flag, an environment variable, the client config file, the
local cluster started by ``alignmesh up`` (address only), a default. The client config file is
``$ALIGNMESH_CLIENT_CONFIG``, else ``~/.config/alignmesh/client.yaml`` (``$XDG_CONFIG_HOME`` honoured), e.g.::

    coordinator: rl-cluster.internal:50051
    token_file: ~/.config/alignmesh/token     # or `token: ...` (then the file must be private: chmod 600)
    tls_ca: ~/.config/alignmesh/ca.pem
    tls_cert: ~/.config/alignmesh/client.pem  # only where the cluster requires client certificates
    tls_key: ~/.config/alignmesh/client.key

A token is never printed; ``source`` says only where each setting came from.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import yaml

from alignmesh.clients.local_state import DEFAULT_COORDINATOR, local_coordinator
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.common.settings import ClusterConfig

ADDRESS_ENV, TOKEN_ENV, CONFIG_ENV = "ALIGNMESH_COORDINATOR", "ALIGNMESH_TOKEN", "ALIGNMESH_CLIENT_CONFIG"
KEYS = ("coordinator", "token", "token_file", "tls_ca", "tls_cert", "tls_key")


@dataclasses.dataclass
class Profile:
    address: str
    address_source: str
    token: str | None = None
    token_source: str = ""
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_source: str = ""

    def describe(self) -> str:
        """Which coordinator and which credentials (never the token itself)."""
        creds = f"token from {self.token_source}" if self.token_source else "no token"
        creds += f", TLS from {self.tls_source}" if self.tls_source else ""
        return f"coordinator {self.address} (from {self.address_source}); {creds}"


def config_path() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "alignmesh" / "client.yaml"


def read_config(path: Path) -> dict:
    """The client config file's settings, checked: a mapping of known keys with string values; a file holding a
    token must not be readable by others."""
    if not path.is_file():
        if os.environ.get(CONFIG_ENV):
            raise ConfigError(f"client config {path} (from ${CONFIG_ENV}): no such file")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"client config {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"client config {path}: top level must be a mapping of {', '.join(KEYS)}")
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"client config {path}: unknown key {key!r}; known keys: {', '.join(KEYS)}")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"client config {path}: {key} must be a non-empty string")
    if "token" in data:
        _check_private(path, "holds a token")
    return data


def _check_private(path: Path, why: str) -> None:
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} {why} but others can read it: chmod 600 {path}")


def _read_bytes(path_text: str, what: str, source: str) -> bytes:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} {path} (from {source}): no such file")
    return path.read_bytes()


def resolve(coordinator: str | None = None, token: str | None = None, tls_ca: str | None = None,
            tls_cert: str | None = None, tls_key: str | None = None, state_dir: str | None = None) -> Profile:
    """The address and credentials a verb uses, from flags (the arguments), then the environment, then the client
    config file, then the local cluster."""
    path = config_path()
    file = read_config(path)
    here = str(path)
    profile = _address(coordinator, file, here, state_dir)
    if token:
        profile.token, profile.token_source = token, "--token"
    elif os.environ.get(TOKEN_ENV):
        profile.token, profile.token_source = os.environ[TOKEN_ENV], f"${TOKEN_ENV}"
    elif "token" in file:
        profile.token, profile.token_source = file["token"], here
    elif "token_file" in file:
        token_path = Path(file["token_file"]).expanduser()
        raw = _read_bytes(file["token_file"], "token_file", here)
        _check_private(token_path, "is a token file")
        profile.token, profile.token_source = raw.decode().strip(), str(token_path)
    flags = {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}
    source = "flags" if any(flags.values()) else here
    chosen = flags if any(flags.values()) else {k: file.get(k) for k in flags}
    if chosen["tls_cert"] and not chosen["tls_key"] or chosen["tls_key"] and not chosen["tls_cert"]:
        raise ConfigError(f"TLS client certificate and key go together (from {source}): give both tls_cert and "
                          "tls_key, or neither")
    for key, value in chosen.items():
        if value:
            setattr(profile, key, _read_bytes(value, key, source))
            profile.tls_source = source
    return profile


def _address(flag: str | None, file: dict, here: str, state_dir: str | None) -> Profile:
    if flag:
        return Profile(flag, "--coordinator")
    if os.environ.get(ADDRESS_ENV):
        return Profile(os.environ[ADDRESS_ENV], f"${ADDRESS_ENV}")
    if "coordinator" in file:
        return Profile(file["coordinator"], here)
    local = local_coordinator(state_dir or ClusterConfig().state_dir)
    if local:
        return Profile(local, "the local cluster")
    return Profile(DEFAULT_COORDINATOR, "the default")
