"""The billing service: each event of the stream handled once, through its own mediator.

It reads the stream in a consumer group and publishes each event into its own `Mediator`. The
handlers' writes and the record that the event was handled commit in one SQLite transaction, and
the entry is acknowledged after that: an event delivered again (sent twice by the relay, or not
acknowledged before a crash) is found handled and only acknowledged. An entry whose handlers
failed stays pending and is claimed again after `retry_after_ms`; after `max_tries` deliveries
it is parked on its own stream, for a person to look at, and acknowledged.

It logs what it does with each batch it reads, and each failure and parked entry. While Redis
cannot be reached it says so once, tries again less and less often (up to every 2 s), and says
when Redis is back. Ctrl-C or SIGTERM stops it.
"""

import argparse
import asyncio
import logging
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Literal

import redis.asyncio
import redis.exceptions

from examples.outbox import RUN_ALONE
from examples.outbox.events import NotificationEvent, OrderPlaced, from_fields
from examples.outbox.relay import STREAM
from examples.outbox.service import UNAVAILABLE, Outage, redis_client, serve
from examples.outbox.storage import open_database, transaction
from mediator import EventRegistry, Mediator

GROUP = "billing"
PARKED = "orders.events.parked"

# A stream entry as redis-py returns it: its id, and its fields.
Entry = tuple[bytes, dict[bytes, bytes]]

# What became of an entry taken from the stream.
Outcome = Literal["billed", "already billed", "failed", "parked"]

log = logging.getLogger("billing")

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

    async def step(self, *, block_ms: int = 100) -> Counter[Outcome]:
        """Handle the entries pending too long, or else new ones; what became of them."""
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
        return Counter([await self._take(entry_id, fields) for entry_id, fields in entries])

    async def _take(self, entry_id: bytes, fields: dict[bytes, bytes]) -> Outcome:
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
                return await self._failed(entry_id, fields, error)
            finally:
                transaction.reset(token)
            if self._before_ack is not None:
                await self._before_ack(event)
            outcome: Outcome = "billed"
        else:
            outcome = "already billed"
        await self._client.xack(STREAM, GROUP, entry_id)
        return outcome

    async def _failed(
        self, entry_id: bytes, fields: dict[bytes, bytes], error: Exception
    ) -> Outcome:
        # Pending it stays, to be claimed again, until it was delivered max_tries times.
        [pending] = await self._client.xpending_range(STREAM, GROUP, entry_id, entry_id, 1)
        tries = int(pending["times_delivered"])
        event_id = fields[b"event_id"].decode()
        if tries < self._max_tries:
            log.warning("event %s failed on try %d: %r", event_id, tries, error)
            return "failed"
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
        log.warning("parked event %s on %s after %d tries: %r", event_id, PARKED, tries, error)
        return "parked"


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
    """Consume until `stop` is set (forever without one), riding out Redis outages."""
    connection = connect(billing_db)
    client = redis_client(redis_url)
    outage = Outage(redis_url, log)
    log.info("reading the stream %s at %s as %s, into %s", STREAM, redis_url, consumer, billing_db)
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
                outcomes = await billing.step()
            except UNAVAILABLE as error:
                joined = False
                await outage.wait(error)
                continue
            outage.over()
            if outcomes:
                log.info("events: %s", ", ".join(f"{n} {what}" for what, n in outcomes.items()))
    finally:
        await client.aclose()
        connection.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.outbox.billing",
        description=__doc__,
        epilog=RUN_ALONE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "billing_db",
        metavar="BILLING_DB",
        help="the billing service's SQLite file, made if missing",
    )
    parser.add_argument(
        "redis_url", metavar="REDIS_URL", help="the Redis to read from: redis://127.0.0.1:6379/0"
    )
    parser.add_argument(
        "--consumer", default="billing-1", help="its name in the consumer group (default billing-1)"
    )
    parser.add_argument(
        "--retry-after-ms",
        type=int,
        default=1000,
        help="how long an entry stays pending before it is claimed again (default 1000)",
    )
    parser.add_argument(
        "--pause-before-ack",
        action="store_true",
        help="for fault tests: after handling an entry, say so and wait before acknowledging it",
    )
    arguments = parser.parse_args(argv)

    async def pause(event: NotificationEvent) -> None:
        print(f"handled {event.event_id}", flush=True)
        await asyncio.Event().wait()

    serve(
        "billing",
        lambda stop: run(
            arguments.billing_db,
            arguments.redis_url,
            consumer=arguments.consumer,
            stop=stop,
            retry_after_ms=arguments.retry_after_ms,
            before_ack=pause if arguments.pause_before_ack else None,
        ),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
