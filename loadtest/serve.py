"""`python -m loadtest.serve APP [flashsale api options]`: serve APP exactly as `flashsale api`
serves FlashSale (the same server and settings: loop, HTTP/1.1, backlog, workers, no access
log; `--server` picks the server as it does there), so a benchmark compares apps and nothing
else.

APP is `flashsale` (the API itself) or an app factory such as `loadtest.apps:bare`.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    from flashsale import cli

    app, options = argv[0], argv[1:]
    return cli.main(["api", *([] if app == "flashsale" else ["--app", app]), *options])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
