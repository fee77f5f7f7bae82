"""The fast path's typed wire structs for engagement envelopes, and how they learn new columns.

``pipeline.decode`` decodes every engagement envelope with these first (its module docstring says
why); they live apart so that the decoder's schema evolution reads in one place.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from pipeline.model import EngagementChange, Skipped

_log = logging.getLogger(__name__)


class _EventRowWire(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """An ``engagement_events`` row as Debezium sends it. An unknown column fails it: see
    :class:`EventDecoder`."""

    id: int
    event_ts: str | int
    content_id: str | None = None
    user_id: str | None = None
    event_type: str | None = None
    duration_ms: int | None = None
    device: str | None = None
    raw_payload: Any = None  # normally the column's JSON text (str); see _raw_payload


EVENT_COLUMNS: Final = frozenset(_EventRowWire.__struct_fields__)


class _SourceWire(msgspec.Struct, gc=False):
    ts_ms: int | None = None
    sequence: str | None = None


class EventDecoder:
    """The fast path's typed decoder, for the event columns known so far.

    Why not one fixed Struct: a Struct has no catch-all field, so a column added to the table
    (``ALTER TABLE engagement_events ADD COLUMN ...``) would be dropped without a word. The wire row
    forbids unknown fields instead: the first row with a new column fails the fast path, the checked
    path keeps every extra column (``EngagementRow.extra``), and ``learn`` builds a decoder with
    that column as a field of its own, so the fast path stays fast after the change, with no restart.
    """

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra  # sorted column names beyond EVENT_COLUMNS
        if extra:
            fields = [(f"x{i}", Any, msgspec.field(default=msgspec.UNSET, name=name)) for i, name in enumerate(extra)]
            row: type = msgspec.defstruct(
                "_EventRowWireEvolved", fields, bases=(_EventRowWire,), gc=False, forbid_unknown_fields=True
            )
        else:
            row = _EventRowWire
        envelope = msgspec.defstruct(
            "_EventEnvelopeWire",
            [
                ("op", str),
                ("before", row | None, None),  # type: ignore[operator]
                ("after", row | None, None),  # type: ignore[operator]
                ("source", _SourceWire | None, None),
                ("ts_ms", int | None, None),
            ],
            gc=False,
        )
        self.decode = msgspec.json.Decoder(envelope).decode

    def extra_of(self, row: Any) -> tuple[tuple[str, Any], ...]:
        if not self.extra:
            return ()
        # A column the row does not have (dropped since, or not in this row) stays out, as it does
        # on the checked path.
        values = ((name, getattr(row, f"x{i}")) for i, name in enumerate(self.extra))
        return tuple(item for item in values if item[1] is not msgspec.UNSET)

    @classmethod
    def learn(cls, current: EventDecoder, change: EngagementChange | Skipped) -> EventDecoder:
        """``current``, or a decoder that also knows the extra columns ``change`` carries."""
        names = set(current.extra)
        for row in (getattr(change, "before", None), getattr(change, "after", None)):
            if row is not None:
                names.update(name for name, _ in row.extra)
        if len(names) == len(current.extra):
            return current
        _log.info("engagement_events has new columns: %s", ", ".join(sorted(names - set(current.extra))))
        return cls(tuple(sorted(names)))
