"""Enrichment math and the CDC difference rules: what one engagement change adds to the aggregates.

An aggregate (per content, per minute, per event type...) must stay equal to a query over the table
as it is now, so every change is turned into signed :class:`~pipeline.model.Contribution` values:
a row that appears adds itself (+1), a row that goes away takes itself back (-1), and an update is
both. Sinks multiply ``seconds`` and ``pct`` by ``sign``; here they stay unsigned.

Pure functions, no I/O: the content join is a ``lookup`` callable the caller backs with whatever
holds the current content table (state, a side input, a dict in tests).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from pipeline.model import ContentRow, Contribution, EngagementChange, EngagementRow

__all__ = [
    "MissingContentError",
    "contributions",
    "engagement_pct",
    "engagement_seconds",
    "epoch_minute",
    "is_over_100",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE: Final = timedelta(minutes=1)


class MissingContentError(LookupError):
    """The content an event points to is not known (yet): the caller may wait for it or dead-letter."""

    def __init__(self, content_id: str) -> None:
        super().__init__(content_id)
        self.content_id = content_id

    def __str__(self) -> str:
        return f"content {self.content_id} not found"


def engagement_seconds(duration_ms: int | None) -> float | None:
    """``duration_ms / 1000``, or ``None`` when the duration is unknown."""
    return None if duration_ms is None else duration_ms / 1000


def engagement_pct(seconds: float | None, length_seconds: int | None) -> float | None:
    """Share of the content engaged with, in percent; ``None`` when it cannot be computed.

    Not clamped: above 100 (re-listening, a wrong length) is kept so the data problem stays visible
    and sums remain reversible by subtraction.
    """
    if seconds is None or length_seconds is None or length_seconds <= 0:
        return None
    return seconds / length_seconds * 100


def is_over_100(pct: float | None) -> bool:
    """Whether an engagement percentage exceeds 100 (worth counting as a data-quality signal)."""
    return pct is not None and pct > 100


def epoch_minute(ts: datetime) -> int:
    """Minutes since the Unix epoch, floored; ``ts`` must be timezone-aware.

    Exact timedelta arithmetic rather than ``ts.timestamp() / 60``: no float rounding at a minute's
    last microsecond, and correct flooring before 1970.
    """
    return (ts - _EPOCH) // _MINUTE


def _contribution(row: EngagementRow, content_id: str, content: ContentRow, sign: int) -> Contribution:
    seconds = engagement_seconds(row.duration_ms)
    return Contribution(
        content_id=content_id,
        content_type=content.content_type,
        minute=epoch_minute(row.event_ts),
        event_type=row.event_type,
        seconds=seconds,
        pct=engagement_pct(seconds, content.length_seconds),
        sign=sign,
    )


def _content(content_id: str, lookup: Callable[[str], ContentRow | None]) -> ContentRow:
    content = lookup(content_id)
    if content is None:
        raise MissingContentError(content_id)
    return content


def contributions(change: EngagementChange, lookup: Callable[[str], ContentRow | None]) -> tuple[Contribution, ...]:
    """The signed contributions of one engagement change: c/r ``(+after)``, u ``(-before, +after)``, d ``(-before)``.

    A row without a ``content_id`` contributes nothing: there is no content to attribute it to.
    ``lookup`` is asked for the content as it is *at processing time*, for the before-image as well
    as the after-image, and :class:`MissingContentError` is raised if it does not know a needed id.

    Caveat of joining at processing time: a change of a content's ``length_seconds`` (or
    ``content_type``) applies to events processed after it, and the before-image of a later update
    or delete is subtracted with the *current* length and type, not those it was added with. The
    ``pct`` (or per-type) aggregates then drift by the difference for that row; counts and seconds
    per content and minute are unaffected. Keeping them exact would need the contribution as added
    stored per event id.

    An update whose two sides would contribute the same (same content, minute, event type and
    seconds, e.g. only ``device`` or ``raw_payload`` changed) returns ``()``: the pair nets to zero.
    """
    op = change.op
    if op == "c" or op == "r":
        after = change.after
        if after is None or after.content_id is None:
            return ()
        return (_contribution(after, after.content_id, _content(after.content_id, lookup), +1),)
    if op == "d":
        before = change.before
        if before is None or before.content_id is None:
            return ()
        return (_contribution(before, before.content_id, _content(before.content_id, lookup), -1),)
    if op != "u":
        raise ValueError(f"unknown op {op!r}")

    before, after = change.before, change.after
    old_id = None if before is None else before.content_id
    new_id = None if after is None else after.content_id
    old_content = None if old_id is None else _content(old_id, lookup)
    # The content rarely changes in an update: reuse the first lookup then.
    new_content = old_content if new_id == old_id else None if new_id is None else _content(new_id, lookup)
    minus = None
    if before is not None and old_id is not None and old_content is not None:
        minus = _contribution(before, old_id, old_content, -1)
    plus = None
    if after is not None and new_id is not None and new_content is not None:
        plus = _contribution(after, new_id, new_content, +1)
    if minus is None:
        return () if plus is None else (plus,)
    if plus is None:
        return (minus,)
    if (
        minus.content_id == plus.content_id
        and minus.minute == plus.minute
        and minus.event_type == plus.event_type
        and minus.seconds == plus.seconds
    ):
        return ()
    return (minus, plus)
