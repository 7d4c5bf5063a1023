"""`python -m loadtest.serve APP [flashsale api options]`: serve APP exactly as `flashsale api`
serves FlashSale (same uvicorn.run arguments: loop, http parser, backlog, proxy headers, access
log, workers), so a benchmark compares apps and nothing else.

APP is `flashsale` (the API itself, through this same path) or a uvicorn factory such as
`loadtest.apps:bare`.
"""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    import uvicorn

    from flashsale import cli

    app, options = argv[0], argv[1:]
    real_run = uvicorn.run

    def run(target: Any, **kwargs: Any) -> None:
        real_run(target if app == "flashsale" else app, **kwargs)

    uvicorn.run = run  # run_api looks it up at call time
    return cli.main(["api", *options])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
