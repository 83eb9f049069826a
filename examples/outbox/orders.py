"""The order service: an order and its notification events, committed in one SQLite transaction.

A handler must not write to the broker itself: a crash between the database's commit and the
broker's send loses the event, and a send followed by a rollback invents one. Here the handler
bound to `NotificationEvent` writes the event to the outbox table, in the order's transaction,
so both are committed or neither is; the relay sends them on afterwards.
"""

import sqlite3
import time

from examples.outbox.events import NotificationEvent, OrderPlaced
from examples.outbox.storage import open_database, transaction
from mediator import EventRegistry, Mediator

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer TEXT NOT NULL,
    total_cents INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
"""



def connect(path: str) -> sqlite3.Connection:
    """A connection to the order database, which it creates if need be."""
    return open_database(path, SCHEMA)


class WriteToOutbox:
    """Writes every notification event to the outbox, in the transaction that produced it."""

    async def handle(self, event: NotificationEvent) -> None:
        transaction.get().execute(
            "INSERT INTO outbox (event_id, type, body) VALUES (?, ?, ?)",
            (event.event_id, type(event).__name__, event.model_dump_json()),
        )


registry = EventRegistry().bind(NotificationEvent, [WriteToOutbox]).freeze()


class OrderService:
    def __init__(self, connection: sqlite3.Connection, mediator: Mediator | None = None) -> None:
        self._connection = connection
        self._mediator = mediator or Mediator(registry)

    async def place_order(self, customer: str, total_cents: int) -> OrderPlaced:
        """Record an order and publish that it was placed; both commit, or neither does."""
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        token = transaction.set(connection)
        try:
            cursor = connection.execute(
                "INSERT INTO orders (customer, total_cents) VALUES (?, ?)", (customer, total_cents)
            )
            assert cursor.lastrowid is not None
            placed = OrderPlaced(
                order_id=cursor.lastrowid,
                customer=customer,
                total_cents=total_cents,
                placed_at=time.time(),
            )
            await self._mediator.publish(placed)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        finally:
            transaction.reset(token)
        return placed
