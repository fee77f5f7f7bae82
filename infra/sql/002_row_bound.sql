-- The row size bound (docs/delivery.md, "Row size bound"; the numbers are in infra/row_bound.py,
-- whose unit test holds them equal to these). Every unbounded column of the two captured tables
-- gets a named CHECK, so a row that could make a Kafka record larger than the stack allows is
-- refused by Postgres at write time (SQLSTATE 23514, the constraint's name in the message) instead
-- of failing the Debezium task for good. event_type and content_type are bounded by their own CHECKs.
--
-- Idempotent on an existing database: each constraint is added only if it is missing, NOT VALID
-- (so adding it never fails on, or locks for a scan over, rows written before it), then validated
-- once. Rows older than the constraint that break it are reported as a WARNING and the constraint
-- stays NOT VALID (still enforced on every new write); delete or shrink them and the next start
-- validates it.

DO $$
DECLARE
    bound RECORD;
BEGIN
    FOR bound IN
        SELECT * FROM (VALUES
            ('engagement_events', 'engagement_events_raw_payload_size',
             'octet_length(raw_payload::text) <= 1048576'),
            ('engagement_events', 'engagement_events_device_size', 'octet_length(device) <= 256'),
            ('content', 'content_title_size', 'octet_length(title) <= 4096'),
            ('content', 'content_slug_size', 'octet_length(slug) <= 1024')
        ) AS b (tbl, name, expr)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_constraint WHERE conname = bound.name AND conrelid = bound.tbl::regclass
        ) THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%s) NOT VALID', bound.tbl, bound.name, bound.expr);
        END IF;
        IF EXISTS (
            SELECT 1 FROM pg_constraint
            WHERE conname = bound.name AND conrelid = bound.tbl::regclass AND NOT convalidated
        ) THEN
            BEGIN
                EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', bound.tbl, bound.name);
            EXCEPTION WHEN check_violation THEN
                RAISE WARNING 'rows of % written before % existed break it: it stays NOT VALID (enforced on new writes)',
                    bound.tbl, bound.name;
            END;
        END IF;
    END LOOP;
END
$$;
