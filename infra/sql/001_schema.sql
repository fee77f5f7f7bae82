-- Seed 004's source schema, exactly, plus what CDC needs.
-- Applied by the stack supervisor as the database owner; every statement is idempotent.

CREATE TABLE IF NOT EXISTS content (
    id UUID PRIMARY KEY,
    slug TEXT UNIQUE NOT NULL,
    title TEXT NOT NULL,
    content_type TEXT CHECK (content_type IN ('podcast', 'newsletter', 'video')),
    length_seconds INTEGER,
    publish_ts TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS engagement_events (
    id BIGSERIAL PRIMARY KEY,
    content_id UUID REFERENCES content(id),
    user_id UUID,
    event_type TEXT CHECK (event_type IN ('play', 'pause', 'finish', 'click')),
    event_ts TIMESTAMPTZ NOT NULL,
    duration_ms INTEGER,
    device TEXT,
    raw_payload JSONB
);

-- The FK column is not indexed by Postgres itself; backfill and per-content queries need it.
CREATE INDEX IF NOT EXISTS engagement_events_content_id_idx ON engagement_events (content_id);
CREATE INDEX IF NOT EXISTS engagement_events_event_ts_idx ON engagement_events (event_ts);

-- FULL: updates and deletes carry the whole before-image, so the pipeline can subtract the old
-- duration, minute and content of a changed event, and an unchanged TOASTed value (raw_payload,
-- title) is never replaced by Debezium's "__debezium_unavailable_value" placeholder.
ALTER TABLE content REPLICA IDENTITY FULL;
ALTER TABLE engagement_events REPLICA IDENTITY FULL;

-- Heartbeat table: Debezium's heartbeat.action.query updates its one row, so the replication slot
-- sees a change (and can confirm its LSN) even when the captured tables are quiet. Without it the
-- slot pins WAL while other databases or tables on the server keep writing.
CREATE TABLE IF NOT EXISTS cdc_heartbeat (
    id INTEGER PRIMARY KEY,
    beat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO cdc_heartbeat (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
