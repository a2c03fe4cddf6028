"""`python -m serving.launch METRICS_DIR serve ...`: `bentoml serve ...` with a Prometheus directory of its own.

`bentoml serve` empties `$BENTOML_HOME/prometheus_multiproc_dir` as it starts and its workers count there. A second
server on the same store (the test suite's servers, a blue/green pair, `churnsense serve` twice) therefore wiped the
files the first one's workers were counting in: the first server's /metrics stopped moving, silently. Each server
started through `serving.server` gets its own directory instead, the way BentoML's own pytest plugin sets it.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m serving.launch METRICS_DIR serve ...")
    from bentoml._internal.configuration.containers import BentoMLContainer  # BentoML 1.4's own test hook
    from bentoml_cli.cli import cli

    BentoMLContainer.prometheus_multiproc_dir.set(argv[0])
    cli(args=argv[1:], prog_name="bentoml")


if __name__ == "__main__":
    main(sys.argv[1:])
