"""The `mcpmeter` command.

Its terminal dependencies (click, rich) come with the ``cli`` extra, which ``server``
includes; the recorder SDK never needs them. Without them the console script says, in
one line, what to install instead of printing a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .main import main as run
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("click", "rich"):
            raise
        sys.stderr.write("error: the mcpmeter command needs the cli extra: pip install 'mcpmeter[cli]'\n")
        sys.exit(1)
    run()
