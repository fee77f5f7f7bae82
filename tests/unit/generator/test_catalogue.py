import random
import statistics
from datetime import UTC, datetime

from faker import Faker

from generator.catalogue import CONTENT_TYPES, edit_content, make_catalogue, random_uuid, slugify

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def catalogue(seed: int = 7, count: int = 2000):
    fake = Faker()
    fake.seed_instance(seed)
    return make_catalogue(random.Random(seed), fake, count, NOW)


def test_same_seed_same_catalogue():
    assert catalogue(3, 50) == catalogue(3, 50)


def test_slugs_and_ids_are_unique():
    items = catalogue()
    assert len({c.slug for c in items}) == len(items)
    assert len({c.id for c in items}) == len(items)


def test_types_and_realistic_lengths():
    items = catalogue()
    assert {c.content_type for c in items} == set(CONTENT_TYPES)
    medians = {
        t: statistics.median(c.length_seconds for c in items if c.content_type == t and c.length_seconds)
        for t in CONTENT_TYPES
    }
    assert 1500 < medians["podcast"] < 3600
    assert 200 < medians["newsletter"] < 600
    assert 250 < medians["video"] < 900
    assert all(c.length_seconds is None or c.length_seconds >= 30 for c in items)
    # A few NULL lengths exist on purpose; most content has one.
    nulls = sum(c.length_seconds is None for c in items)
    assert 0 < nulls < len(items) * 0.05


def test_publish_ts_in_the_past_and_timezone_aware():
    assert all(c.publish_ts <= NOW and c.publish_ts.tzinfo is not None for c in catalogue(count=100))


def test_slugify():
    assert slugify("Hello, World!  Again") == "hello-world-again"
    assert slugify("!!!") == "item"


def test_random_uuid_is_v4_and_seeded():
    a, b = random_uuid(random.Random(1)), random_uuid(random.Random(1))
    assert a == b and a.version == 4


def test_edit_content_changes_title_or_length_only():
    rng = random.Random(5)
    for item in catalogue(count=100):
        edited = edit_content(rng, item)
        assert edited.id == item.id and edited.slug == item.slug
        assert (
            (edited.title != item.title) or (edited.length_seconds != item.length_seconds) or item.length_seconds == 30
        )


def test_repeated_edits_keep_one_tag():
    rng = random.Random(8)
    item = catalogue(count=1)[0]
    for _ in range(20):
        item = edit_content(rng, item)
    assert item.title.count("(") <= 1
