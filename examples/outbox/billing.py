"""The billing service: each event of the stream handled once, through its own mediator.

    python -m examples.outbox.billing BILLING_DB REDIS_URL --consumer billing-1

It reads the stream in a consumer group and publishes each event into its own `Mediator`. The
handlers' writes and the record that the event was handled commit in one SQLite transaction, and
the entry is acknowledged after that: an event delivered again (sent twice by the relay, or not
acknowledged before a crash) is found handled and only acknowledged. An entry whose handlers
failed stays pending and is claimed again after `retry_after_ms`; after `max_tries` deliveries
it is parked on its own stream, for a person to look at, and acknowledged.
"""

import argparse
import asyncio
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable

import redis.asyncio
import redis.exceptions

from examples.outbox.events import NotificationEvent, OrderPlaced, from_fields
from examples.outbox.relay import STREAM, UNAVAILABLE, redis_client
from examples.outbox.storage import open_database, transaction
from mediator import EventRegistry, Mediator

GROUP = "billing"
PARKED = "orders.events.parked"

# A stream entry as redis-py returns it: its id, and its fields.
Entry = tuple[bytes, dict[bytes, bytes]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    charge_id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id INTEGER NOT NULL,
    customer TEXT NOT NULL,
    total_cents INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS handled (event_id TEXT PRIMARY KEY, handled_at REAL NOT NULL);
"""


def connect(path: str) -> sqlite3.Connection:
    """A connection to the billing database, which it creates if need be."""
    return open_database(path, SCHEMA)


class ChargeCustomer:
    async def handle(self, event: OrderPlaced) -> None:
        transaction.get().execute(
            "INSERT INTO charges (order_id, customer, total_cents) VALUES (?, ?, ?)",
            (event.order_id, event.customer, event.total_cents),
        )


registry = EventRegistry().bind(OrderPlaced, [ChargeCustomer]).freeze()


class Billing:
    def __init__(
        self,
        connection: sqlite3.Connection,
        client: redis.asyncio.Redis,
        *,
        consumer: str,
        mediator: Mediator | None = None,
        max_tries: int = 3,
        retry_after_ms: int = 1000,
        before_ack: Callable[[NotificationEvent], Awaitable[None]] | None = None,
    ) -> None:
        self._connection = connection
        self._client = client
        self._consumer = consumer
        self._mediator = mediator or Mediator(registry)
        self._max_tries = max_tries
        self._retry_after_ms = retry_after_ms
        self._before_ack = before_ack

    async def join(self) -> None:
        """Create the consumer group, reading the stream from its start, unless it exists."""
        try:
            await self._client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def step(self, *, block_ms: int = 100) -> int:
        """Handle the entries pending too long, or else new ones; how many it took."""
        # Replies as RESP2 gives them: XAUTOCLAIM [cursor, entries, deleted], XREADGROUP
        # [[stream, entries]], each entry (id, fields).
        claimed = await self._client.xautoclaim(
            STREAM, GROUP, self._consumer, self._retry_after_ms, start_id="0-0", count=100
        )
        entries: list[Entry] = claimed[1]
        if not entries:
            read = await self._client.xreadgroup(
                GROUP, self._consumer, {STREAM: ">"}, count=100, block=block_ms
            )
            for _, stream_entries in read if isinstance(read, list) else []:
                entries += stream_entries
        for entry_id, fields in entries:
            await self._take(entry_id, fields)
        return len(entries)

    async def _take(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        event = from_fields(fields)
        connection = self._connection
        seen = connection.execute("SELECT 1 FROM handled WHERE event_id = ?", (event.event_id,))
        if seen.fetchone() is None:
            connection.execute("BEGIN IMMEDIATE")
            token = transaction.set(connection)
            try:
                await self._mediator.publish(event)
                connection.execute(
                    "INSERT INTO handled (event_id, handled_at) VALUES (?, ?)",
                    (event.event_id, time.time()),
                )
                connection.execute("COMMIT")
            except BaseException as error:
                connection.execute("ROLLBACK")
                if not isinstance(error, Exception):
                    raise
                await self._failed(entry_id, fields, error)
                return
            finally:
                transaction.reset(token)
            if self._before_ack is not None:
                await self._before_ack(event)
        await self._client.xack(STREAM, GROUP, entry_id)

    async def _failed(self, entry_id: bytes, fields: dict[bytes, bytes], error: Exception) -> None:
        # Pending it stays, to be claimed again, until it was delivered max_tries times.
        [pending] = await self._client.xpending_range(STREAM, GROUP, entry_id, entry_id, 1)
        tries = int(pending["times_delivered"])
        if tries < self._max_tries:
            return
        async with self._client.pipeline(transaction=True) as park:
            park.xadd(
                PARKED,
                {
                    b"event_id": fields[b"event_id"],
                    b"type": fields[b"type"],
                    b"body": fields[b"body"],
                    b"error": repr(error).encode(),
                    b"tries": b"%d" % tries,
                },
            )
            park.xack(STREAM, GROUP, entry_id)
            await park.execute()


async def run(
    billing_db: str,
    redis_url: str,
    *,
    consumer: str,
    stop: asyncio.Event | None = None,
    mediator: Mediator | None = None,
    retry_after_ms: int = 1000,
    before_ack: Callable[[NotificationEvent], Awaitable[None]] | None = None,
) -> None:
    """Consume until `stop` is set (forever without one), riding out Redis restarts."""
    connection = connect(billing_db)
    client = redis_client(redis_url)
    billing = Billing(
        connection,
        client,
        consumer=consumer,
        mediator=mediator,
        retry_after_ms=retry_after_ms,
        before_ack=before_ack,
    )
    try:
        joined = False
        while stop is None or not stop.is_set():
            try:
                if not joined:
                    await billing.join()
                    joined = True
                await billing.step()
            except UNAVAILABLE:
                joined = False
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()
        connection.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("billing_db")
    parser.add_argument("redis_url")
    parser.add_argument("--consumer", default="billing-1")
    parser.add_argument("--retry-after-ms", type=int, default=1000)
    parser.add_argument(
        "--pause-before-ack",
        action="store_true",
        help="for fault tests: after handling an entry, say so and wait before acknowledging it",
    )
    arguments = parser.parse_args(argv)

    async def pause(event: NotificationEvent) -> None:
        print(f"handled {event.event_id}", flush=True)
        await asyncio.Event().wait()

    print("billing ready", flush=True)
    asyncio.run(
        run(
            arguments.billing_db,
            arguments.redis_url,
            consumer=arguments.consumer,
            retry_after_ms=arguments.retry_after_ms,
            before_ack=pause if arguments.pause_before_ack else None,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
