"""The Storage Write half of the null BigQuery (``loadtest.null_bigquery``): a gRPC ``BigQueryWrite``
whose streams keep only their row counts.

CreateWriteStream, AppendRows, GetWriteStream, FinalizeWriteStream, BatchCommitWriteStreams and
FlushRows. An append at an offset other than its stream's end is refused as BigQuery refuses it
(ALREADY_EXISTS behind the end, OUT_OF_RANGE past it), and a finalized stream takes no more, so the
sink's exactly-once path (``sinks.bigquery_storage_write``) runs unchanged. Rows are counted (Arrow
record batches by their header, proto rows by number) and dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import grpc
import pyarrow as pa
from google.cloud.bigquery_storage_v1 import types

SERVICE: Final = "google.cloud.bigquery.storage.v1.BigQueryWrite"
# The raw protobuf classes: proto-plus wrappers cost a copy per message, and this is the hot path.
_AppendRequest = types.AppendRowsRequest.pb()
_AppendResponse = types.AppendRowsResponse.pb()
_CreateRequest = types.CreateWriteStreamRequest.pb()
_WriteStream = types.WriteStream.pb()
_GetRequest = types.GetWriteStreamRequest.pb()
_FinalizeRequest = types.FinalizeWriteStreamRequest.pb()
_FinalizeResponse = types.FinalizeWriteStreamResponse.pb()
_CommitRequest = types.BatchCommitWriteStreamsRequest.pb()
_CommitResponse = types.BatchCommitWriteStreamsResponse.pb()
_FlushRequest = types.FlushRowsRequest.pb()
_FlushResponse = types.FlushRowsResponse.pb()


def _status(code: grpc.StatusCode, message: str) -> Any:
    response = _AppendResponse()
    response.error.code = code.value[0]
    response.error.message = message
    return response


class WriteService:
    """BigQueryWrite with streams that keep only their row counts."""

    def __init__(self, on_rows: Callable[[int, int], None], on_other: Callable[[], None]) -> None:
        self._on_rows = on_rows  # (rows, request bytes) of each append applied
        self._on_other = on_other
        self._streams: dict[str, int] = {}  # stream name -> rows appended
        self._finalized: set[str] = set()
        self._schemas: dict[bytes, pa.Schema] = {}  # an Arrow writer schema, read once
        self._lock = threading.Lock()
        self._next = 0

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(method: Callable[[Any, Any], Any], request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=request.FromString, response_serializer=response.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateWriteStream": unary(self.create, _CreateRequest, _WriteStream),
                "AppendRows": grpc.stream_stream_rpc_method_handler(
                    self.append_rows,
                    # Sized as received, before parsing: the request bytes the sink sent.
                    request_deserializer=lambda raw: (len(raw), _AppendRequest.FromString(raw)),
                    response_serializer=_AppendResponse.SerializeToString,
                ),
                "GetWriteStream": unary(self.get, _GetRequest, _WriteStream),
                "FinalizeWriteStream": unary(self.finalize, _FinalizeRequest, _FinalizeResponse),
                "BatchCommitWriteStreams": unary(self.batch_commit, _CommitRequest, _CommitResponse),
                "FlushRows": unary(self.flush, _FlushRequest, _FlushResponse),
            },
        )

    def create(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._on_other()
        stream = _WriteStream()
        stream.CopyFrom(request.write_stream)
        with self._lock:
            self._next += 1
            stream.name = f"{request.parent}/streams/null-{self._next}"
            self._streams[stream.name] = 0
        return stream

    def _known(self, name: str, context: grpc.ServicerContext) -> int:
        rows = self._streams.get(name)
        if rows is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Requested entity was not found: {name}")
        return rows  # type: ignore[return-value] - abort raises

    def get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._on_other()
        with self._lock:
            self._known(request.name, context)
        return _WriteStream(name=request.name)

    def finalize(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._on_other()
        with self._lock:
            rows = self._known(request.name, context)
            self._finalized.add(request.name)
        return _FinalizeResponse(row_count=rows)

    def batch_commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._on_other()
        response = _CommitResponse()
        response.commit_time.GetCurrentTime()
        return response

    def flush(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._on_other()
        return _FlushResponse(offset=request.offset.value)

    def append_rows(self, requests: Iterator[tuple[int, Any]], context: grpc.ServicerContext) -> Iterator[Any]:
        name = ""
        for size, request in requests:
            name = request.write_stream or name  # only the first request of a connection must name it
            rows = self._row_count(request)
            with self._lock:
                end = self._streams.get(name)
                if end is None:
                    response = _status(grpc.StatusCode.NOT_FOUND, f"Requested entity was not found: {name}")
                elif name in self._finalized:
                    response = _status(grpc.StatusCode.FAILED_PRECONDITION, f"Stream is finalized: {name}")
                elif request.HasField("offset") and request.offset.value != end:
                    behind = request.offset.value < end
                    code = grpc.StatusCode.ALREADY_EXISTS if behind else grpc.StatusCode.OUT_OF_RANGE
                    response = _status(code, f"offset {request.offset.value}, stream end {end}")
                else:
                    self._streams[name] = end + rows
                    response = _AppendResponse(write_stream=name)
                    response.append_result.offset.value = end
            if not response.HasField("error"):
                self._on_rows(rows, size)
            yield response

    def _row_count(self, request: Any) -> int:
        if request.HasField("proto_rows"):
            return len(request.proto_rows.rows.serialized_rows)
        arrow = request.arrow_rows
        if not arrow.rows.serialized_record_batch:
            return 0
        raw = arrow.writer_schema.serialized_schema
        schema = self._schemas.get(raw)
        if schema is None:
            schema = self._schemas[raw] = pa.ipc.read_schema(pa.py_buffer(raw))
        return pa.ipc.read_record_batch(pa.py_buffer(arrow.rows.serialized_record_batch), schema).num_rows
