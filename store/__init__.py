"""The event store: customers and events in a database (SQLite by default, PostgreSQL at scale).

- `schema`: tables, opening a store by SQLAlchemy URL, versioned migrations under a lock;
- `ingest`: a spec's files into the store (idempotent, incremental, rejects with reasons);
- `read`: a customer's lookback window back as canonical frames (by-id scoring), or the whole store as files
  (batch scoring);
- `append`: new interactions from the service (`POST /events`).
"""

from store.schema import DEFAULT_URL, StoreError, open_store, safe_url

__all__ = ["DEFAULT_URL", "StoreError", "open_store", "safe_url"]
