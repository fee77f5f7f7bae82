"""The content view's table: inserts, updates and deletes applied in topic order (no Kafka)."""

from datetime import UTC, datetime

from pipeline.model import ContentChange, ContentRow, Skipped, SourcePosition
from pipeline.sources.content_view import ContentTable

ID = "11111111-1111-4111-8111-111111111111"
POS = SourcePosition("content", 0, 0)


def row(title: str, length: int | None = 100) -> ContentRow:
    return ContentRow(ID, "slug", title, "podcast", length, datetime(2026, 1, 1, tzinfo=UTC))


def test_insert_update_delete_and_tombstone():
    table = ContentTable()
    table.apply(ContentChange(POS, None, None, "r", None, None, row("v1"), 0))
    assert table.rows[ID].title == "v1"
    table.apply(ContentChange(POS, None, None, "u", None, row("v1"), row("v2", 200), 0))
    assert table.rows[ID].length_seconds == 200  # applies to events processed from now on
    table.apply(ContentChange(POS, None, None, "d", None, row("v2", 200), None, 0))
    assert ID not in table.rows
    table.apply(Skipped(POS, "tombstone"))
    assert table.rows == {}


def test_content_arriving_late_is_found_once_applied():
    table = ContentTable()
    assert table.rows.get(ID) is None
    table.apply(ContentChange(POS, None, None, "c", None, None, row("late"), 0))
    assert table.rows.get(ID) == row("late")
