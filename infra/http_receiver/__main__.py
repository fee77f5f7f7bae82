"""``python -m infra.http_receiver``: the local HTTP receiver, ingest and control port in one process.

The defaults come from ``HTTP_RECEIVER_*`` (``infra.settings``), so the stack and a bare run agree;
the stack and Docker Compose pass the addresses explicitly. Logs go to stderr, one line per state
change (listening, down, up, faults changed), never one per request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from infra.http_receiver.server import serve
from infra.settings import HttpReceiverSettings


def main(argv: list[str] | None = None) -> int:
    defaults = HttpReceiverSettings()
    parser = argparse.ArgumentParser(prog="python -m infra.http_receiver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=defaults.host, help=f"address of both ports (default {defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"ingest port (default {defaults.port})")
    parser.add_argument(
        "--control-port",
        type=int,
        default=defaults.control_port,
        help=f"control port: faults, stats, changes (default {defaults.control_port})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(args.host, args.port, args.control_port))


if __name__ == "__main__":
    sys.exit(main())
