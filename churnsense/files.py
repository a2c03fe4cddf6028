"""Write a file so that readers never see half of it: the one "temporary name, then rename" in the project.

    with atomic_path(out) as tmp:          # a unique temporary name beside `out`
        table.to_parquet(tmp)             # renamed onto `out` when the block succeeds, removed when it fails

`os.replace` is atomic within one file system, which is why the temporary file sits beside its target.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (parent folders made); renamed onto `path` on success, removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_parquet(table: Any, path: str | Path) -> None:
    """A pandas DataFrame (index dropped) or an Arrow table as Parquet."""
    with atomic_path(path) as tmp:
        if hasattr(table, "to_parquet"):
            table.to_parquet(tmp, index=False)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
