"""Where the lakeFS endpoint and credentials come from: arguments, then environment, then lakectl.

Each setting is taken from the first source that has it, so an endpoint may come from
``LAKECTL_SERVER_ENDPOINT_URL`` while the keys come from ``~/.lakectl.yaml``. The environment
variable names and the YAML layout are lakectl's, so an installed lakectl setup just works.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.errors import InvalidArgumentError

ENV_ENDPOINT = "LAKECTL_SERVER_ENDPOINT_URL"
ENV_ACCESS_KEY_ID = "LAKECTL_CREDENTIALS_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY"
#: lakectl's own override of the config file location.
ENV_CONFIG_FILE = "LAKECTL_CONFIG_FILE"
API_PATH = "/api/v1"


@dataclass(frozen=True)
class LakeFSSettings:
    """How to reach one lakeFS installation.

    Attributes:
        endpoint: server base URL without the API path (``https://lakefs.example.com``).
        access_key_id: the lakeFS access key id (also the S3 gateway key).
        secret_access_key: the matching secret.
    """

    endpoint: str
    access_key_id: str
    secret_access_key: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"LakeFSSettings(endpoint={self.endpoint!r}, access_key_id={self.access_key_id!r})"


def normalize_endpoint(url: str) -> str:
    """Strip a trailing ``/`` and ``/api/v1`` and add ``http://`` when no scheme is given."""
    url = url.strip().rstrip("/")
    if url.endswith(API_PATH):
        url = url[: -len(API_PATH)]
    if "://" not in url:
        url = "http://" + url
    return url


def _lakectl_file(env: Mapping[str, str]) -> dict[str, Any]:
    path = Path(env.get(ENV_CONFIG_FILE) or Path.home() / ".lakectl.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    import yaml  # a dependency of the lakefs package

    data = yaml.safe_load(text) or {}
    return data if isinstance(data, dict) else {}


def resolve_settings(
    endpoint: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> LakeFSSettings:
    """Settings from explicit arguments, else ``LAKECTL_*`` variables, else ``~/.lakectl.yaml``.

    Args:
        endpoint: server URL; ``/api/v1`` may be given or left out.
        access_key_id: access key id.
        secret_access_key: secret key.
        env: the environment to read (``os.environ`` when None).

    Raises:
        InvalidArgumentError: no source gives an endpoint or the keys.
    """
    env = os.environ if env is None else env
    yaml_data = _lakectl_file(env)
    server = yaml_data.get("server") or {}
    credentials = yaml_data.get("credentials") or {}
    url = endpoint or env.get(ENV_ENDPOINT) or server.get("endpoint_url")
    key = access_key_id or env.get(ENV_ACCESS_KEY_ID) or credentials.get("access_key_id")
    secret = (
        secret_access_key or env.get(ENV_SECRET_ACCESS_KEY) or credentials.get("secret_access_key")
    )
    missing = [
        name
        for name, value in (
            (f"endpoint ({ENV_ENDPOINT})", url),
            (f"access key id ({ENV_ACCESS_KEY_ID})", key),
            (f"secret access key ({ENV_SECRET_ACCESS_KEY})", secret),
        )
        if not value
    ]
    if missing:
        raise InvalidArgumentError(
            "lakeFS settings missing: "
            + ", ".join(missing)
            + "; pass them, set the LAKECTL_* variables or run 'lakectl config'"
        )
    return LakeFSSettings(normalize_endpoint(str(url)), str(key), str(secret))
