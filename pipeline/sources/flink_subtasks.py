"""Which Flink subtask runs a reader element, so that the readers can be spread evenly over them.

Flink keys a splittable DoFn's input by the element itself (Beam's ``SdfFlinkKeyKeySelector``), so
the subtask that reads a ``ReaderSpec`` is fixed by a hash of its encoded bytes. With a few readers
per subtask, a hash spreads them unevenly (two readers on two subtasks share one half the time),
and a TaskManager left without a reader adds nothing. ``spread`` gives each reader a ``slot`` (a
salt the reader ignores) chosen so that reader *j* lands on subtask *j mod parallelism*.

``subtask`` replays what the runner computes, from public, stable definitions:

- the key's bytes: the element as Beam Python encodes it (``FastPrimitivesCoder``: a type byte and
  the pickle), behind the length prefix the Java runner reads an unknown (Python) coder with;
- Beam's ``FlinkKey.hashCode``: Guava's ``murmur3_128`` of those bytes, as an int (``asInt``: its
  first four bytes, little-endian);
- Flink's ``KeyGroupRangeAssignment``: key group = ``MathUtils.murmurHash(hash) % max parallelism``,
  subtask = ``key group * parallelism // max parallelism``. The job is submitted with Flink's
  default max parallelism, 128 (``pipeline.runners``).

If a later Beam or Flink changes any of these, the readers are still all read (the salt changes
nothing else); only the spread gets uneven again, which ``make status`` shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar

import mmh3
from apache_beam.coders import FastPrimitivesCoder

MAX_PARALLELISM = 128
SLOT_TRIES = 10_000
T = TypeVar("T")
_MASK = 0xFFFFFFFF


def _int32(value: int) -> int:
    value &= _MASK
    return value - (1 << 32) if value >= 1 << 31 else value


def _rotl(value: int, bits: int) -> int:
    value &= _MASK
    return ((value << bits) | (value >> (32 - bits))) & _MASK


def flink_murmur_hash(code: int) -> int:
    """Flink's ``MathUtils.murmurHash(int)``: a non-negative int."""
    code = (code * 0xCC9E2D51) & _MASK
    code = _rotl(code, 15)
    code = (code * 0x1B873593) & _MASK
    code = _rotl(code, 13)
    code = (code * 5 + 0xE6546B64) & _MASK
    code ^= 4
    code ^= code >> 16
    code = (code * 0x85EBCA6B) & _MASK
    code ^= code >> 13
    code = (code * 0xC2B2AE35) & _MASK
    code ^= code >> 16
    signed = _int32(code)
    if signed >= 0:
        return signed
    return -signed if signed != -(1 << 31) else 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key_hash(element_bytes: bytes) -> int:
    """Beam's ``FlinkKey.hashCode`` of an element the SDK encoded as ``element_bytes``."""
    key = _varint(len(element_bytes)) + element_bytes
    return _int32(int.from_bytes(mmh3.hash_bytes(key)[:4], "little"))


def subtask(element_bytes: bytes, parallelism: int, max_parallelism: int = MAX_PARALLELISM) -> int:
    key_group = flink_murmur_hash(key_hash(element_bytes)) % max_parallelism
    return key_group * parallelism // max_parallelism


def encode(element: object) -> bytes:
    return FastPrimitivesCoder().encode(element)


def spread(elements: Sequence[T], parallelism: int, encoder: Callable[[T], bytes] = encode) -> list[T]:
    """``elements`` (dataclasses with an int field ``slot``), each with the first ``slot`` that puts
    element *j* on subtask *j mod parallelism*."""
    if parallelism <= 1:
        return list(elements)
    placed = []
    for index, element in enumerate(elements):
        wanted = index % parallelism
        for slot in range(SLOT_TRIES):
            candidate = dataclasses.replace(element, slot=slot)  # type: ignore[type-var]
            if subtask(encoder(candidate), parallelism) == wanted:
                placed.append(candidate)
                break
        else:  # cannot happen for any sane parallelism; an uneven spread is still correct
            placed.append(element)
    return placed
