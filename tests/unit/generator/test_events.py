import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from faker import Faker

from generator.catalogue import make_catalogue
from generator.events import EVENT_TYPES, EventFactory, duration_ms, share_count, zipf_cum_weights
from infra.settings import GeneratorSettings

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def factory(seed: int = 11, **overrides) -> EventFactory:
    fake = Faker()
    fake.seed_instance(seed)
    rng = random.Random(seed)
    settings = GeneratorSettings(**overrides)
    return EventFactory(make_catalogue(rng, fake, 200, NOW), settings, rng)


def test_zipf_weights_increase_with_decreasing_steps():
    weights = zipf_cum_weights(5, 1.0)
    assert weights[0] == 1.0
    steps = [b - a for a, b in zip([0.0, *weights], weights, strict=False)]
    assert steps == sorted(steps, reverse=True)


def test_popularity_is_skewed():
    rows = factory().batch(20_000, NOW)
    counts = Counter(r[0] for r in rows).most_common()
    top_share = sum(c for _, c in counts[:10]) / len(rows)
    # With s=1.1 over 200 items the top 5 % of the catalogue draws around half the events.
    assert top_share > 0.35
    assert counts[-1][1] < counts[0][1] / 20


def test_rows_have_the_copy_column_shape():
    rows = factory().batch(1000, NOW)
    for content_id, user_id, event_type, event_ts, duration, device, payload in rows:
        assert event_type in EVENT_TYPES
        assert duration is None or duration >= 0
        assert event_ts.tzinfo is not None
        assert device
        assert set(orjson.loads(payload)) == {"session_id", "app_version", "referrer"}
        assert content_id.version == 4 and user_id.version == 4


def test_null_durations_only_for_click_and_pause():
    rows = factory().batch(5000, NOW)
    nulls = Counter(r[2] for r in rows if r[4] is None)
    assert set(nulls) <= {"click", "pause"}
    assert nulls["click"] > 0 and nulls["pause"] > 0


def test_finish_duration_close_to_length_and_may_exceed_it():
    rng = random.Random(1)
    values = [duration_ms(rng, "finish", 600) for _ in range(2000)]
    assert all(540_000 <= v <= 630_000 for v in values)
    assert any(v > 600_000 for v in values)  # engagement_pct above 100 occurs


def test_play_duration_within_length():
    rng = random.Random(2)
    assert all(0 <= duration_ms(rng, "play", 300) <= 300_000 for _ in range(2000))


def test_duration_without_length_is_still_plausible():
    rng = random.Random(3)
    assert all(v is None or v >= 0 for v in (duration_ms(rng, t, None) for t in EVENT_TYPES for _ in range(200)))


def test_event_ts_jitter_and_late_share():
    rows = factory(late_share=0.05, jitter_s=2.0, late_max_s=600).batch(20_000, NOW)
    ages = [(NOW - r[3]).total_seconds() for r in rows]
    assert all(0 <= a <= 600 for a in ages)
    late = sum(a >= 60 for a in ages) / len(ages)
    assert 0.04 < late < 0.06
    assert all(NOW - r[3] >= timedelta(0) for r in rows)


def test_same_seed_same_stream():
    assert factory(5).batch(100, NOW) == factory(5).batch(100, NOW)


def test_empty_catalogue_is_a_clear_error():
    with pytest.raises(ValueError, match="catalogue is empty"):
        EventFactory([], GeneratorSettings(), random.Random(1))


def test_share_count_averages_to_the_share():
    rng = random.Random(9)
    total = sum(share_count(rng, 100, 0.005) for _ in range(20_000))
    assert 9_000 < total < 11_000  # 0.5 per call on average
    assert share_count(rng, 100, 0.0) == 0
