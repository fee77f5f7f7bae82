"""``python -m pipeline dashboard`` (``make dashboard``): serve the live leaderboard page."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from infra.settings import Settings
from pipeline.dashboard.app import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline dashboard", description=(__doc__ or "").split("\n")[0])
    parser.parse_args(argv)
    settings = Settings()
    ds = settings.dashboard
    print(f"live leaderboard: {ds.url} (Ctrl-C stops it)", flush=True)
    uvicorn.run(create_app(settings), host=ds.host, port=ds.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
