"""The order service: an order and its notification events, committed in one SQLite transaction.

A handler must not write to the broker itself: a crash between the database's commit and the
broker's send loses the event, and a send followed by a rollback invents one. Here the handler
bound to `NotificationEvent` writes the event to the outbox table, in the order's transaction,
so both are committed or neither is; the relay sends them on afterwards.

Run alone, it places a few orders; Ctrl-C rolls back the one under way.
"""

import argparse
import asyncio
import signal
import sqlite3
import sys
import time
from contextlib import closing

from examples.outbox import RUN_ALONE
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


async def place_orders(orders_db: str, count: int) -> None:
    with closing(connect(orders_db)) as connection:
        service = OrderService(connection)
        for number in range(count):
            await asyncio.sleep(0)  # a turn of the loop, where Ctrl-C's cancellation lands
            order = await service.place_order(f"customer {number}", 100 + number)
            print(f"placed order {order.order_id}, event {order.event_id}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.outbox.orders",
        description=__doc__,
        epilog=RUN_ALONE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "orders_db", metavar="ORDERS_DB", help="the order service's SQLite file, made if missing"
    )
    parser.add_argument("--count", type=int, default=10, help="how many orders (default 10)")
    arguments = parser.parse_args(argv)
    # Ctrl-C from here on is asyncio.run's: it cancels the order under way, which rolls back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asyncio.run(place_orders(arguments.orders_db, arguments.count))
    except KeyboardInterrupt:
        print("interrupted: the orders printed above are placed, no other", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
