"""A progress bar for an operator command that waits on a run of its own (replay, http-replay):
how much of the work the run's stored positions now cover, polled while it goes on.

tqdm on stderr, so that a command's report (and its ``--json``) stays alone on stdout; off when
stderr is not a terminal, as in CI and in pipes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm


def follow(
    run: subprocess.Popen[bytes],
    total: int,
    done: Callable[[], int | None],
    *,
    what: str,
    unit: str = "record",
    show: bool | None = None,
    every_s: float = 1.0,
    out: TextIO | None = None,
) -> int:
    """Wait for ``run`` and return its exit code, with a bar of ``done()`` out of ``total``, asked
    every ``every_s``. ``done`` returns None when it cannot tell (a store not answering): the bar
    stays. ``show``: None on a terminal only, True or False to force it. On any exception here
    (Ctrl-C included) the run is killed and reaped before it goes on, as ``subprocess.run`` does."""
    disable = None if show is None else not show
    try:
        with tqdm(total=total, desc=what, unit=unit, disable=disable, file=out or sys.stderr) as bar:
            if bar.disable:
                return run.wait()
            while True:
                try:
                    code: int | None = run.wait(timeout=every_s)
                except subprocess.TimeoutExpired:
                    code = None
                now = done()
                if now is not None and now > bar.n:
                    bar.update(min(now, total) - bar.n)
                if code is not None:
                    return code
    except BaseException:
        run.kill()
        run.wait()
        raise
