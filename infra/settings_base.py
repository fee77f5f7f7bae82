"""What every settings group of ``infra.settings`` shares: its pydantic-settings configuration, the
base class of groups that hold secrets, and the repository root that local paths are relative to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import PrivateAttr
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.secrets import LocalDefaultPasswordError, Secret, holds_local_default, name_secrets

REPO_ROOT = Path(__file__).resolve().parent.parent


def config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore", frozen=True, populate_by_name=True)


class Group(BaseSettings):
    """A settings group whose ``Secret`` fields know their setting, so that they pickle as
    references to it, and whose local default passwords are refused off loopback (``infra.secrets``)."""

    # Set by ``Settings`` from ALLOW_LOCAL_DEFAULT_PASSWORDS (Docker Compose's private network).
    _local_defaults_allowed: bool = PrivateAttr(default=False)

    def model_post_init(self, context: Any, /) -> None:
        name_secrets(self)

    def checked(self, field: str, *hosts: str) -> Secret:
        """The secret ``field`` for a connection to ``hosts``: refused while it still holds the
        repository's local default and a host is not loopback. Checked where it is used, so a
        process that never connects to a service needs none of its passwords."""
        secret: Secret = getattr(self, field)
        if not self._local_defaults_allowed and holds_local_default(self, field, hosts):
            raise LocalDefaultPasswordError(
                f"{secret.setting} holds the local default from this repository, refused for {', '.join(hosts)}, "
                "which is not loopback: set your own (docs/security.md)"
            )
        return secret
