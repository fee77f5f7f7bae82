"""What every settings group of ``infra.settings`` shares: its pydantic-settings configuration, and
the repository root that local paths are relative to."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore", frozen=True, populate_by_name=True)
