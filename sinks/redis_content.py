"""The ``content:{id}`` metadata hashes, from the content topic, exactly once per source position.

Each change replaces the hash (title, slug, content_type, length_seconds); a delete removes it. One
Lua script per batch applies the changes and stores the positions by compare-and-set
(``sinks.redis_store``), so a replay or a stale writer changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sinks.contract import APPLIED, Batch, Outcome
from sinks.records import ContentChange
from sinks.redis_keys import RedisKeys
from sinks.redis_store import RedisSink, lua


class RedisContentSink(RedisSink):
    name = "redis_content"

    def open(self) -> None:
        super().open()
        self._apply = self.client.register_script(lua("positions.lua", "content_apply.lua"))

    def write(self, batch: Batch[ContentChange]) -> Outcome:
        keys = self.position_keys()
        args = [*self.batch_position_args(batch), *_changes(batch.records, keys, self.keys)]
        self.run(self._apply, keys, args)
        return APPLIED


def _changes(changes: Sequence[ContentChange], keys: list[str], names: RedisKeys) -> list[Any]:
    """ARGV of the changes for ``lua/content_apply.lua``; each change's key is appended to ``keys``."""
    args: list[Any] = [len(changes)]
    for change in changes:
        row = change.after or change.before
        assert row is not None  # decode guarantees the image its op needs
        keys.append(names.content(row.id))
        args += [
            "1" if change.after is None else "0",
            row.title or "",
            row.slug or "",
            row.content_type or "",
            "" if row.length_seconds is None else row.length_seconds,
        ]
    return args
