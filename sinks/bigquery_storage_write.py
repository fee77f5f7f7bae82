"""The Storage Write API mode: exactly-once appends to committed streams at explicit offsets.

``BIGQUERY_WRITE_MODE=storage_write`` replaces insertAll with the Storage Write API. Rows go to
COMMITTED write streams, one per (Kafka partition, table), as Arrow record batches, each append at
an explicit offset: BigQuery (and the emulator) refuse an append whose offset is not the stream's
end, so an append is applied once.

Exactly once across a crash rests on one fact: a partition's records come back in the same order
after a restart, and so do the rows they make for one table. Each partition's stored position
(``sinks.kafka_positions``) also records, per table, the stream and how many rows of it that
position covers. At start, each recorded stream is finalized, which returns its real row count.
The rows past the recorded count were appended by the crashed run: the next that many rows of that
partition and table are skipped, not appended again. A new stream is recorded (with the position
as it was) before its first append, so no stream is ever appended to without being known.

A writer finalizes a partition's recorded streams only when it first writes that partition
(``StreamAppender.claim``), not when it loads the positions: every writer loads the whole topic's
positions, and a lane dealt over processes (Prism's worker processes, Flink's subtasks) has other
writers whose live streams are recorded there too.

Limits: the emulator keeps streams in memory, so after an emulator restart a recorded stream is
gone and its uncommitted tail may be written again (the view still hides it). A row's quarter table
depends on the wall clock only for outliers, so a crash at a quarter boundary could route a row
differently; the view hides that too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
import pyarrow as pa
from google.api_core import exceptions as api
from google.api_core import retry as retries
from google.api_core.client_options import ClientOptions
from google.cloud import bigquery_storage_v1
from google.cloud.bigquery_storage_v1 import types
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import BigQueryWriteGrpcTransport

from infra.settings import BigQuerySettings

GRPC_OFFSET: Final = 10  # the emulator's gRPC port is ten above its REST port
_ARROW_TYPES: Final = {
    "STRING": pa.string(),
    "INT64": pa.int64(),
    "FLOAT64": pa.float64(),
    "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "JSON": pa.string(),
}
_ALREADY_EXISTS: Final = grpc.StatusCode.ALREADY_EXISTS.value[0]


@dataclass
class Stream:
    name: str
    rows: int  # rows of it accounted for: appended (the next append's offset), or skipped as already there
    committed: int = 0  # rows of it the stored positions cover
    real: int | None = None  # a finalized stream of a crashed run: its real row count


def encode_streams(entries: Sequence[tuple[str, str, int]]) -> str:
    """``table=stream@rows`` entries, in append order (a table can have an old and a live stream)."""
    return ",".join(f"{table}={name}@{rows}" for table, name, rows in entries)


def decode_streams(text: str) -> list[tuple[str, str, int]]:
    entries = []
    for part in filter(None, text.split(",")):
        table, _, rest = part.partition("=")
        name, _, rows = rest.rpartition("@")
        entries.append((table, name, int(rows)))
    return entries


def arrow_schema(schema: Sequence[Any]) -> pa.Schema:
    return pa.schema([pa.field(f.name, _ARROW_TYPES[f.field_type], nullable=f.mode != "REQUIRED") for f in schema])


def record_batch(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    """The rows as one Arrow batch. Arrow's own converters read the dicts and parse the RFC 3339
    timestamps (text in the rows, as insertAll takes them), far faster than a Python loop per value."""
    as_text = pa.schema([f.with_type(pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema])
    batch = pa.RecordBatch.from_pylist(list(rows), schema=as_text)
    columns = [
        column.cast(field.type) if pa.types.is_timestamp(field.type) else column
        for column, field in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def convertible(row: dict[str, Any], schema: pa.Schema) -> str | None:
    """Why ``row`` cannot become an Arrow row of ``schema`` (a per-row outcome), or None."""
    try:
        record_batch([row], schema)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        return f"BigQuery Storage Write: {exc}"
    return None


def make_write_client(settings: BigQuerySettings) -> bigquery_storage_v1.BigQueryWriteClient:
    if settings.emulated:
        url = urlsplit(settings.emulator_host)
        channel = grpc.insecure_channel(f"{url.hostname}:{(url.port or 0) + GRPC_OFFSET}")
        return bigquery_storage_v1.BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))
    return bigquery_storage_v1.BigQueryWriteClient(client_options=ClientOptions())


class StorageWriter:
    """Create, append to and finalize committed streams; no knowledge of positions.

    The client's own retries are bounded here, or off. Its defaults retry CreateWriteStream for up
    to 20 minutes and AppendRows for a day, so an outage held a flush inside one call. Worse,
    AppendRows takes an iterator of requests, and the client's retry calls again with the iterator
    the first try consumed: the second try sends nothing and the reply stream ends empty. An append
    is therefore tried once (``retry=None``), and an empty reply is an unavailable service: the
    sink's ``RetryPolicy`` sends a new request at the same offset, which BigQuery answers
    ALREADY_EXISTS if the first try landed.
    """

    def __init__(
        self, client: bigquery_storage_v1.BigQueryWriteClient, timeout_s: float, retry_deadline_s: float
    ) -> None:
        self._client = client
        self._timeout = timeout_s
        self._retry = retries.Retry(
            initial=0.1,
            maximum=2.0,
            multiplier=1.3,
            predicate=retries.if_exception_type(api.ServiceUnavailable, api.ResourceExhausted, api.DeadlineExceeded),
            timeout=retry_deadline_s,
        )

    @staticmethod
    def table_path(table_id: str) -> str:
        project, dataset, table = table_id.split(".")
        return f"projects/{project}/datasets/{dataset}/tables/{table}"

    def create(self, table_id: str) -> Stream:
        stream = self._client.create_write_stream(
            parent=self.table_path(table_id),
            write_stream=types.WriteStream(type_=types.WriteStream.Type.COMMITTED),
            retry=self._retry,
            timeout=self._timeout,
        )
        return Stream(stream.name, 0)

    def finalize(self, stream: Stream) -> int | None:
        """The stream's real row count, or None if the stream is gone."""
        try:
            reply = self._client.finalize_write_stream(name=stream.name, retry=self._retry, timeout=self._timeout)
            return int(reply.row_count)
        except api.NotFound:
            return None

    def append(self, stream: Stream, batch: pa.RecordBatch) -> None:
        """Append ``batch`` at the stream's offset."""
        request = types.AppendRowsRequest(
            write_stream=stream.name,
            offset=stream.rows,
            arrow_rows=types.AppendRowsRequest.ArrowData(
                writer_schema=types.ArrowSchema(serialized_schema=batch.schema.serialize().to_pybytes()),
                rows=types.ArrowRecordBatch(serialized_record_batch=batch.serialize().to_pybytes()),
            ),
        )
        try:
            replies = self._client.append_rows(iter([request]), retry=None, timeout=self._timeout)
            response = next(iter(replies), None)
            if response is None:
                raise api.ServiceUnavailable(f"AppendRows to {stream.name} ended without a reply")
            code, message = response.error.code, response.error.message
        except api.AlreadyExists:
            code, message = _ALREADY_EXISTS, ""
        if code and code != _ALREADY_EXISTS:
            status = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.INTERNAL)
            raise api.from_grpc_status(status, message)
        # ALREADY_EXISTS: an earlier try of this same append landed (its reply was lost). The rows
        # at this offset are these rows (a retry sends the same ones, in order): it is applied.
        stream.rows += batch.num_rows


class StreamAppender:
    """Which stream each (partition, table) appends to, what to skip after a crash, and what to
    store with the positions (see the module docstring).

    Per partition and table: the finalized streams of crashed runs whose tail is not yet covered by
    the stored positions, oldest first, then at most one live stream. An old stream stays in the
    stored form until the positions cover its tail, so a second crash before that still knows it.
    """

    def __init__(self, writer: StorageWriter) -> None:
        self._writer = writer
        self._streams: dict[str, dict[str, list[Stream]]] = {}  # partition key -> table id -> streams
        self._unclaimed: dict[str, str] = {}  # partition key -> its stored form, not finalized yet

    def resume(self, extras: Mapping[str, str]) -> None:
        """From the stored streams, each partition's finalized at its ``claim``."""
        self._streams.clear()
        self._unclaimed = dict(extras)

    def claim(self, key: str) -> None:
        """Finalize the partition's stored streams, to learn what the crashed runs appended past
        them; once, before this writer's first skip or append there."""
        text = self._unclaimed.get(key)
        if text is None:
            return
        tables: dict[str, list[Stream]] = {}
        for table_id, name, covered in decode_streams(text):
            real = self._writer.finalize(Stream(name, covered))
            # Gone (an emulator restart): nothing known past what the positions cover.
            stream = Stream(name, covered, covered, covered if real is None else max(real, covered))
            tables.setdefault(table_id, []).append(stream)
        self._streams[key] = tables
        del self._unclaimed[key]

    def stored_form(self, key: str, *, committed_only: bool = False) -> str:
        if key in self._unclaimed:  # a position moved by dead letters only: what was stored stands
            return self._unclaimed[key]
        entries = []
        for table_id, streams in sorted(self._streams.get(key, {}).items()):
            for stream in streams:
                count = stream.committed if committed_only else stream.rows
                if stream.real is None or count < stream.real:
                    entries.append((table_id, stream.name, count))
        return encode_streams(entries)

    def committed(self, keys: Sequence[str]) -> None:
        for key in keys:
            for table_id, streams in self._streams.get(key, {}).items():
                for stream in streams:
                    stream.committed = stream.rows
                # An old stream whose tail the positions now cover is done with.
                self._streams[key][table_id] = [s for s in streams if s.real is None or s.committed < s.real]

    def take_skip(self, key: str, table_id: str, available: int) -> int:
        """How many of the next ``available`` rows of this partition and table a crashed run
        appended already: they count as applied."""
        self.claim(key)
        taken = 0
        for stream in self._streams.get(key, {}).get(table_id, []):
            if stream.real is None or taken == available:
                break
            step = min(stream.real - stream.rows, available - taken)
            stream.rows += step
            taken += step
        return taken

    def append(
        self,
        key: str,
        table_id: str,
        batch: pa.RecordBatch,
        record_stream: Callable[[str], None],
    ) -> None:
        """Append ``batch`` (without refused or skipped rows) of one partition to ``table_id``."""
        self.claim(key)
        streams = self._streams.setdefault(key, {}).setdefault(table_id, [])
        live = streams[-1] if streams and streams[-1].real is None else None
        if live is None:
            live = self._writer.create(table_id)
            streams.append(live)
            try:
                record_stream(key)  # stored before its first append: no stream is ever unknown
            except BaseException:
                streams.pop()
                raise
        try:
            self._writer.append(live, batch)
        except api.NotFound:
            # The stream is gone (the emulator keeps none across a restart), not its rows: every
            # append that returned is in the table. It ends with those rows, and the retry of this
            # batch goes to a new stream.
            live.real = live.rows
            raise
