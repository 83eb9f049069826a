"""SQLite for both services: a database per service, transactions opened explicitly."""

import sqlite3
from contextvars import ContextVar

# The connection whose transaction is open, for the handlers that write in it.
transaction: ContextVar[sqlite3.Connection] = ContextVar("transaction")


def open_database(path: str, schema: str) -> sqlite3.Connection:
    """A connection to the database at `path`, created with `schema` if need be."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.executescript(schema)
    return connection
