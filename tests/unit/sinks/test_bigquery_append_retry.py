"""A Storage Write append whose reply is lost, through the real client and a real gRPC server.

The server is the null BigQuery's write service (``loadtest.null_bigquery_write``) with one fault in
front of it: the first AppendRows call is applied and then fails UNAVAILABLE, as a connection cut
after the server's commit would. The client's default retry sent the consumed request iterator
again, an empty call; ``StorageWriter`` tries once and leaves the retry to the sink.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as api
from google.cloud import bigquery_storage_v1
from google.cloud.bigquery_storage_v1 import types
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import BigQueryWriteGrpcTransport

from loadtest.bench_bigquery import sample_rows
from loadtest.null_bigquery_write import SERVICE, WriteService
from sinks.bigquery_storage_write import StorageWriter, arrow_schema, record_batch
from sinks.bigquery_tables import CHANGES_SCHEMA

TABLE = "p.analytics.engagement_changes_2026q4"
_AppendRequest = types.AppendRowsRequest.pb()
_AppendResponse = types.AppendRowsResponse.pb()


class FirstReplyLost:
    """AppendRows in front of ``service``: every call is applied; the first one's reply is lost."""

    def __init__(self, service: WriteService) -> None:
        self.service = service
        self.requests_per_call: list[int] = []

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "AppendRows": grpc.stream_stream_rpc_method_handler(
                    self.append_rows,
                    request_deserializer=lambda raw: (len(raw), _AppendRequest.FromString(raw)),
                    response_serializer=_AppendResponse.SerializeToString,
                )
            },
        )

    def append_rows(self, requests: Iterator[tuple[int, Any]], context: grpc.ServicerContext) -> Iterator[Any]:
        received = list(requests)
        self.requests_per_call.append(len(received))
        replies = list(self.service.append_rows(iter(received), context))
        if len(self.requests_per_call) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset after the commit")
        yield from replies


@pytest.fixture
def faulty() -> Iterator[tuple[FirstReplyLost, StorageWriter]]:
    service = WriteService(on_rows=lambda rows, size: None, on_other=lambda: None)
    fault = FirstReplyLost(service)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((fault.handler(), service.handler()))  # AppendRows: the fault's
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = bigquery_storage_v1.BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))
    try:
        yield fault, StorageWriter(client, timeout_s=5, retry_deadline_s=5)
    finally:
        channel.close()
        server.stop(None)


def test_an_append_whose_reply_is_lost_fails_whole_and_its_retry_is_taken_as_applied(
    faulty: tuple[FirstReplyLost, StorageWriter],
) -> None:
    fault, writer = faulty
    stream = writer.create(TABLE)
    batch = record_batch(sample_rows(3, 0)[0], arrow_schema(CHANGES_SCHEMA))
    with pytest.raises(api.ServiceUnavailable):
        writer.append(stream, batch)
    assert stream.rows == 0  # not counted: the sink retries the batch
    writer.append(stream, batch)  # the same rows at the same offset: ALREADY_EXISTS, the first try landed
    assert stream.rows == 3
    assert fault.requests_per_call == [1, 1]  # no call went out empty
    assert writer.finalize(stream) == 3  # the rows are in the stream once
