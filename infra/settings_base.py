"""What every settings group of ``infra.settings`` shares: its pydantic-settings configuration."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict


def config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore", frozen=True, populate_by_name=True)
