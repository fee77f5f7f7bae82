"""What every settings group of ``infra.settings`` shares: its pydantic-settings configuration, the
base class of groups that hold secrets, and the repository root that local paths are relative to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.secrets import name_secrets

REPO_ROOT = Path(__file__).resolve().parent.parent


def config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore", frozen=True, populate_by_name=True)


class Group(BaseSettings):
    """A settings group whose ``Secret`` fields know their setting, so that they pickle as
    references to it (``infra.secrets``)."""

    def model_post_init(self, context: Any, /) -> None:
        name_secrets(self)
