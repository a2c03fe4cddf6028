"""The one base class for errors a user can fix. The CLI prints their message on one line and exits 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class UserError(ValueError):
    """Bad input (spec, data, config, arguments): the message names the file or field and the problem."""


def read_yaml_file(path: str | Path, error: type[UserError], what: str = "file") -> Any:
    """The parsed content of a YAML file; `error` naming the file when it is missing or not YAML.

    Shared by the dataset spec and the training configs, so each says the same thing about the same mistake.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise error(f"{file}: {what} not found")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as problem:
        raise error(f"{file}: not valid YAML ({problem})") from None
