"""``python -m pipeline status`` (``make status``): what is running, how far behind, and what is wrong.

Exits 0 when healthy, 1 with the reasons when not (``pipeline.status.health`` has the rules).
"""

from __future__ import annotations

import argparse
import signal
import sys

import orjson

from infra.settings import Settings
from pipeline.status.health import report
from pipeline.status.read import sample
from pipeline.status.render import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline status", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    # `make status | head` should end quietly, not with a BrokenPipeError traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    settings = Settings()
    result = report(sample(settings), settings)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(result))
    return 0 if result["healthy"] else 1


if __name__ == "__main__":
    sys.exit(main())
