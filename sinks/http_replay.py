"""``python -m sinks.http_replay`` (``make http-replay``): send the HTTP dead-letter topic again.

Each letter the HTTP sink gave up on carries the change exactly as it was sent
(``dlq.http.change``), with its original idempotency key, and the endpoint it was for. Replay posts
those bytes again, in offset order per partition, in batches of ``HTTP_SINK_BATCH_MAX_RECORDS``, to
the endpoint's URL in the current configuration (so a moved endpoint is followed), with the same
headers, timeouts, retries and backoff as the sink.

What has been replayed is tracked per endpoint in Kafka, as committed offsets of the group
``<PIPELINE_CONSUMER_GROUP>.sink.http-replay.<endpoint>``, committed after each batch is settled. A
second run starts where the first stopped and delivers nothing twice. A letter the endpoint refuses
again (a 4xx) is counted as refused and passed: it stays on the topic, and ``--from-beginning``
sends everything again (the receiver's idempotency keys absorb what it already has). A run stopped
in the middle of a batch sends that batch's delivered letters again next time: at least once, by
key. Letters for an endpoint that is no longer configured stay on the topic until it is again.

It refuses to start while a running pipeline's breaker for the endpoint is open (published in
Redis, ``sinks.http_breaker``), and stops as soon as its own breaker, with the sink's thresholds,
opens: the endpoint is not back yet. Exit status: 0 done, 1 stopped by failures, 2 configuration,
3 refused.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import orjson
import pybreaker
from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import ValidationError
from tqdm import tqdm

from infra.settings import Settings
from sinks.contract import RetryPolicy
from sinks.http import breaker_config, client_policy, request_headers
from sinks.http_breaker import BreakerBoard, make_breaker, report
from sinks.http_client import EndpointClient, Sent, make_client
from sinks.http_routes import Route, RoutesError
from sinks.kafka_positions import group_id
from sinks.registry import http_routes

EXIT_STOPPED, EXIT_CONFIG, EXIT_REFUSED = 1, 2, 3


@dataclass
class Report:
    endpoint: str
    letters: int = 0  # this endpoint's letters read in this run
    delivered: int = 0
    refused_again: int = 0
    unreadable: int = 0  # no change to send (not written by the HTTP sink)
    not_delivered: int = 0  # read, but the run stopped before they were delivered
    unread: int = 0  # records of the topic (any endpoint) left for the next run
    requests: int = 0
    stopped: str = ""
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> next offset to replay


@dataclass(frozen=True)
class Letter:
    partition: int
    offset: int
    key: str
    change: bytes


class Replayer:
    def __init__(self, settings: Settings, route: Route, *, from_beginning: bool = False) -> None:
        hs = settings.http_sink
        self._settings = settings
        self._route = route
        self._topic = settings.cdc.http_dlq_topic
        self._from_beginning = from_beginning
        self._batch = hs.batch_max_records
        self._policy = RetryPolicy(hs.initial_backoff_s, hs.max_backoff_s, hs.budget_s)
        self.group = group_id(settings.pipeline.consumer_group, f"http-replay.{route.endpoint}")
        self._http = make_client(hs.connect_timeout_s, hs.request_timeout_s, 1)
        self._client = EndpointClient(
            route.endpoint, route.url, request_headers(hs, route), self._http, client_policy(hs, route)
        )
        self._breaker = make_breaker(f"replay.{route.endpoint}", breaker_config(hs))
        self._last_failure = ""

    def run(self, *, progress: bool | None = None) -> Report:
        """Send this endpoint's letters; ``progress``: a bar of the letters read, on stderr (None:
        when it is a terminal)."""
        report = Report(self._route.endpoint)
        consumer = Consumer(
            self._settings.kafka.client_config(
                **{"group.id": self.group, "enable.auto.commit": False, "auto.offset.reset": "earliest"}
            )
        )
        try:
            ranges = self._ranges(consumer)
            total = sum(max(0, end - start) for _, start, end in ranges)
            disable = None if progress is None else not progress
            with tqdm(total=total, desc=self._route.endpoint, unit="letter", disable=disable, file=sys.stderr) as bar:
                for partition, start, end in ranges:
                    report.partitions[partition] = start
                    if not report.stopped:
                        self._replay_partition(consumer, partition, start, end, report, bar)
                    else:
                        report.unread += max(0, end - start)
        finally:
            consumer.close()
            self._http.close()
        return report

    def _ranges(self, consumer: Consumer) -> list[tuple[int, int, int]]:
        """``(partition, first offset to replay, end offset)``, the end fixed now: letters that
        arrive during the run wait for the next one."""
        meta = consumer.list_topics(self._topic, timeout=10).topics[self._topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        partitions = [TopicPartition(self._topic, p) for p in sorted(meta.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        ranges = []
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            start = committed.get(tp.partition, -1)
            start = low if self._from_beginning or start < 0 else max(start, low)
            ranges.append((tp.partition, start, high))
        return ranges

    def _replay_partition(
        self, consumer: Consumer, partition: int, start: int, end: int, report: Report, bar: tqdm
    ) -> None:
        if start >= end:
            return
        consumer.assign([TopicPartition(self._topic, partition, start)])
        batch: list[Letter] = []
        offset = start
        last_read = time.monotonic()
        while offset < end and not report.stopped:
            message = consumer.poll(1.0)
            if message is None:
                if time.monotonic() - last_read > 30:
                    report.stopped = f"partition {partition}: nothing read for 30 s at offset {offset} of {end}"
                continue
            if message.error() is not None:
                raise KafkaException(message.error())
            last_read = time.monotonic()
            bar.update(message.offset() + 1 - offset)
            offset = message.offset() + 1
            letter = self._letter(message, report)
            if letter is not None:
                batch.append(letter)
            if batch and (len(batch) >= self._batch or offset >= end):
                self._send(batch, report)
                batch = []
                if not report.stopped:
                    self._commit(consumer, partition, offset, report)  # everything up to here is settled
        if report.stopped:
            report.not_delivered += len(batch)  # read, never sent: the stall came first
            report.unread += end - offset
        elif report.partitions[partition] != offset:
            self._commit(consumer, partition, offset, report)  # a tail of other endpoints' letters

    def _letter(self, message: object, report: Report) -> Letter | None:
        headers = dict(message.headers() or [])  # type: ignore[attr-defined]
        if headers.get("dlq.http.endpoint", b"").decode() != self._route.endpoint:
            return None
        report.letters += 1
        change = headers.get("dlq.http.change") or b""
        try:
            key = orjson.loads(change)["idempotency_key"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            report.unreadable += 1
            return None
        return Letter(message.partition(), message.offset(), key, change)  # type: ignore[attr-defined]

    def _send(self, batch: list[Letter], report: Report) -> None:
        """Post until every letter is delivered or refused; stop the run when the endpoint fails."""
        pending = batch
        began = time.monotonic()
        attempt = 0
        while pending:
            if self._breaker.current_state == pybreaker.STATE_OPEN:
                report.stopped = f"{self._route.endpoint} is failing again (breaker open): {self._last_failure}"
                report.not_delivered += len(pending)
                return
            sent = self._post(pending)
            report.requests += sent.requests
            report.delivered += len(sent.delivered)
            report.refused_again += len(sent.rejected)
            retry = [pending[i] for i in sorted(sent.retry)]
            if not retry:
                return
            first = next(iter(sent.retry.values()))
            self._last_failure = first[1]
            attempt += 1
            if self._policy.exhausted(time.monotonic() - began):
                report.stopped = f"gave up after {self._policy.budget_s:g} s of retries: {first[1]}"
                report.not_delivered += len(retry)
                return
            pending = retry
            time.sleep(self._policy.delay(attempt, first[2]))

    def _post(self, letters: Sequence[Letter]) -> Sent:
        sent = self._client.post([letter.key for letter in letters], [letter.change for letter in letters])
        report(self._breaker, sent.failure if sent.endpoint_failed else None)
        return sent

    def _commit(self, consumer: Consumer, partition: int, offset: int, report: Report) -> None:
        consumer.commit(offsets=[TopicPartition(self._topic, partition, offset)], asynchronous=False)
        report.partitions[partition] = offset


def open_breakers(settings: Settings, endpoints: Sequence[str]) -> list[str]:
    """Running pipelines' breakers that are not closed for ``endpoints``, described."""
    try:
        board = BreakerBoard(settings.redis.client(timeout_s=2.0)).read()
    except Exception as exc:  # noqa: BLE001 - say why the check could not be made, and go on
        print(f"note: breaker states not checked (Redis: {exc})", file=sys.stderr)
        return []
    found = []
    for endpoint in endpoints:
        for entry in board.get(endpoint, []):
            if entry["state"] != pybreaker.STATE_CLOSED:
                age = time.time() - entry["at"]
                found.append(f"{endpoint}: {entry['state']} ({entry['detail'] or 'failing'}; {age:.0f} s ago)")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks.http_replay", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", action="append", help="only this endpoint (repeatable); default: all")
    parser.add_argument("--from-beginning", action="store_true", help="send every letter again, replayed or not")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
        routes = {route.endpoint: route for route in http_routes(settings)}
    except (ValidationError, RoutesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not routes:
        print("error: the HTTP sink is not configured (set HTTP_SINK_URL or HTTP_SINK_ROUTES_FILE)", file=sys.stderr)
        return EXIT_CONFIG
    chosen = args.endpoint or sorted(routes)
    unknown = [name for name in chosen if name not in routes]
    if unknown:
        print(f"error: unknown endpoint {unknown[0]!r}; configured: {', '.join(sorted(routes))}", file=sys.stderr)
        return EXIT_CONFIG
    refused = open_breakers(settings, chosen)
    if refused:
        print("refusing to replay: the pipeline's circuit breaker is not closed for", file=sys.stderr)
        for line in refused:
            print(f"  {line}", file=sys.stderr)
        print("Wait until the endpoint is back and the breaker has closed, then run it again.", file=sys.stderr)
        return EXIT_REFUSED
    try:
        progress = False if args.json else None
        reports = [
            Replayer(settings, routes[name], from_beginning=args.from_beginning).run(progress=progress)
            for name in chosen
        ]
    except KafkaException as exc:
        print(f"error: Kafka: {exc}; nothing more was replayed (what was is tracked)", file=sys.stderr)
        return EXIT_STOPPED
    if args.json:
        print(orjson.dumps([asdict(r) for r in reports], option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    else:
        for r in reports:
            print(
                f"{r.endpoint}: {r.letters} letter(s) to replay, {r.delivered} delivered, "
                f"{r.refused_again} refused again, {r.unreadable} unreadable, {r.not_delivered} not delivered, "
                f"{r.unread} left unread ({r.requests} request(s))"
            )
            if r.stopped:
                print(f"  stopped: {r.stopped}")
    return EXIT_STOPPED if any(r.stopped for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
