"""Passwords and tokens that never travel with the job graph.

Beam pickles every step with its arguments into the job graph; the runner keeps it, and Dataflow
shows it to anyone who can read the job. A ``Secret`` is a ``SecretStr`` that pickles as a
*reference* instead of its value, and is resolved again where it is unpickled, on first use (a
sink's ``setup()``):

1. ``secretmanager:projects/P/secrets/NAME/versions/V``: a setting may hold a Secret Manager
   resource instead of a value. The reference is not secret; the value is fetched from Secret
   Manager with the worker's own credentials (the way to give secrets to Dataflow workers).
2. In the process that pickled it (Prism's LOOPBACK workers, tests): the value held in memory under
   a random token that the pickle carries.
3. Elsewhere (a Flink worker pool, a Kubernetes sidecar): the same setting read afresh from that
   process's environment, ``.env`` file or default, by the settings group that declared it.

A ``SecretConfig`` is a Kafka client configuration whose secret entries do the same, resolved when
the configuration is unpickled (librdkafka takes only strings).

Hand-written because no library pickles a settings field as a reference to itself; Secret Manager's
own client does the fetching.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import secrets
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr

SECRET_MANAGER_PREFIX = "secretmanager:"

Owner = tuple[str, str, str]  # (module, settings class, field)

_held: dict[str, str] = {}
_lock = threading.Lock()


class LocalDefaultPasswordError(ValueError):
    """A password printed in this repository, about to guard a service beyond loopback."""


class UnresolvedSecretError(RuntimeError):
    """A secret's reference could not be resolved where it was unpickled."""


class Secret(SecretStr):
    """A ``SecretStr`` that knows the setting it came from (``owner``) and pickles as a reference."""

    def __init__(self, secret_value: str, *, owner: Owner | None = None, token: str | None = None) -> None:
        super().__init__(secret_value)
        self.owner = owner
        self._token = token
        self._pending = token is not None

    @property
    def setting(self) -> str:
        """The environment variable of the setting (``REDIS_PASSWORD``), or ``"a secret"``."""
        return setting_name(self.owner)

    def get_secret_value(self) -> str:
        if self._pending:
            self._secret_value = _resolve(self.owner, self._token)
            self._pending = False
        raw = self._secret_value
        if raw.startswith(SECRET_MANAGER_PREFIX):
            return _secret_manager(raw[len(SECRET_MANAGER_PREFIX) :])
        return raw

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if not self._pending and self._secret_value.startswith(SECRET_MANAGER_PREFIX):
            return (Secret, (self._secret_value,))
        return (_restore, (self.owner, self._hold()))

    def _hold(self) -> str:
        with _lock:
            if self._token is None:
                self._token = secrets.token_hex(16)
                _held[self._token] = self._secret_value
        return self._token

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, SecretStr) and self.get_secret_value() == other.get_secret_value()

    def __hash__(self) -> int:
        return hash(self.get_secret_value())


def _restore(owner: Owner | None, token: str) -> Secret:
    return Secret("", owner=owner, token=token)


def _resolve(owner: Owner | None, token: str | None) -> str:
    with _lock:
        if token is not None and token in _held:
            return _held[token]
    if owner is None:
        raise UnresolvedSecretError("a secret given in code, not by a setting, cannot be resolved in another process")
    value = getattr(_owner_class(owner)(), owner[2])
    if value is None:
        raise UnresolvedSecretError(f"{setting_name(owner)} is not set in this worker's environment")
    return value.get_secret_value()


def _owner_class(owner: Owner) -> Any:
    return getattr(importlib.import_module(owner[0]), owner[1])


def setting_name(owner: Owner | None) -> str:
    if owner is None:
        return "a secret"
    return f"{_owner_class(owner).model_config.get('env_prefix', '')}{owner[2]}".upper()


@functools.cache
def _secret_manager(resource: str) -> str:
    from google.cloud import secretmanager

    response = secretmanager.SecretManagerServiceClient().access_secret_version(name=resource)
    return response.payload.data.decode()


def name_secrets(model: Any) -> None:
    """Tell each ``Secret`` field of a settings group where it came from (``model_post_init``)."""
    cls = type(model)
    for field in cls.model_fields:
        value = getattr(model, field)
        if isinstance(value, Secret) and value.owner is None:
            value.owner = (cls.__module__, cls.__qualname__, field)


class SecretConfig(dict[str, Any]):
    """A client configuration (``{"sasl.password": ...}``) whose secret entries pickle as references."""

    def __init__(self, plain: Mapping[str, Any], secret: Mapping[str, Secret]) -> None:
        super().__init__({**plain, **{k: v.get_secret_value() for k, v in secret.items()}})
        self._secret = dict(secret)

    def with_(self, **extra: Any) -> SecretConfig:
        """A copy with more plain entries (a plain ``{**config}`` would drop the references)."""
        plain = {k: v for k, v in self.items() if k not in self._secret}
        return SecretConfig({**plain, **extra}, self._secret)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        plain = {k: v for k, v in self.items() if k not in self._secret}
        return (SecretConfig, (plain, self._secret))


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def holds_local_default(model: Any, field: str, hosts: Iterable[str]) -> bool:
    """Whether the secret ``field`` of ``model`` still holds its local default while a host is not
    loopback: a password printed in this repository guards nothing beyond one machine."""
    if all(not h or is_loopback(h) for h in hosts):
        return False
    default, value = type(model).model_fields[field].default, getattr(model, field)
    # The configured value, not a fetch: a Secret Manager reference is never a local default.
    return isinstance(default, SecretStr) and isinstance(value, Secret) and value._secret_value == default._secret_value
