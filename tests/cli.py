"""Running `churnsense ...` in the test process, through the console script's `main()`."""

from __future__ import annotations

import sys

import pytest


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """Run `churnsense ARGS` through `main()` (so UserError handling is exercised); (exit code, out, err)."""
    from churnsense.cli import main

    monkeypatch.setattr(sys, "argv", ["churnsense", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
