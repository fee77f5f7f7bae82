"""The content catalogue: podcasts, newsletters and videos with realistic lengths and unique slugs.

Pure functions over an injected ``random.Random`` and ``Faker``, so a seed reproduces a catalogue.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from faker import Faker

CONTENT_TYPES = ("podcast", "newsletter", "video")
CONTENT_TYPE_WEIGHTS = (0.35, 0.25, 0.40)
# Median length in seconds and spread (log-normal sigma) per type: a podcast ~40 min,
# a newsletter's reading time ~6 min, a video ~8 min.
LENGTH_MEDIAN_S = {"podcast": 2400.0, "newsletter": 360.0, "video": 480.0}
LENGTH_SIGMA = {"podcast": 0.5, "newsletter": 0.5, "video": 0.8}
# A few rows without a length (a newsletter with no reading-time estimate yet): the pipeline must
# cope with a NULL length, so the generator produces some.
NULL_LENGTH_SHARE = 0.01

_NON_SLUG = re.compile(r"[^a-z0-9]+")
EDIT_TAGS = ("updated", "revised", "remastered")
_EDIT_SUFFIX = re.compile(r" \((?:" + "|".join(EDIT_TAGS) + r")\)$")


@dataclass(frozen=True, slots=True)
class Content:
    id: uuid.UUID
    slug: str
    title: str
    content_type: str
    length_seconds: int | None
    publish_ts: datetime


def random_uuid(rng: random.Random) -> uuid.UUID:
    """A version-4 UUID drawn from ``rng`` (``uuid.uuid4`` would ignore the seed)."""
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def slugify(text: str) -> str:
    return _NON_SLUG.sub("-", text.lower()).strip("-")[:60] or "item"


def random_length(rng: random.Random, content_type: str) -> int | None:
    if rng.random() < NULL_LENGTH_SHARE:
        return None
    median, sigma = LENGTH_MEDIAN_S[content_type], LENGTH_SIGMA[content_type]
    return max(30, int(rng.lognormvariate(0.0, sigma) * median))


def make_content(rng: random.Random, fake: Faker, now: datetime) -> Content:
    content_type = rng.choices(CONTENT_TYPES, CONTENT_TYPE_WEIGHTS)[0]
    title = fake.sentence(nb_words=rng.randint(3, 8)).rstrip(".")
    content_id = random_uuid(rng)
    return Content(
        id=content_id,
        # The id's first 8 hex digits make slugs unique even when Faker repeats a title.
        slug=f"{slugify(title)}-{content_id.hex[:8]}",
        title=title,
        content_type=content_type,
        length_seconds=random_length(rng, content_type),
        publish_ts=now - timedelta(seconds=rng.uniform(0, 2 * 365 * 86400)),
    )


def make_catalogue(rng: random.Random, fake: Faker, count: int, now: datetime) -> list[Content]:
    return [make_content(rng, fake, now) for _ in range(count)]


def edit_content(rng: random.Random, content: Content) -> Content:
    """An editorial update: a retitle or a re-cut that changes the length by up to 15 %."""
    if rng.random() < 0.5 or content.length_seconds is None:
        base = _EDIT_SUFFIX.sub("", content.title)  # one tag at most, however often it is edited
        return replace(content, title=f"{base} ({rng.choice(EDIT_TAGS)})")
    factor = rng.uniform(0.85, 1.15)
    return replace(content, length_seconds=max(30, int(content.length_seconds * factor)))
