"""The relay: moves outbox rows to a Redis Stream in order, then marks them sent.

    python -m examples.outbox.relay ORDERS_DB REDIS_URL

It sends before it marks: a relay that dies in between sends those rows again once it restarts,
so the stream may carry an event twice but never loses one, and the consumer, which handles
each event id once, makes a second copy harmless.
"""

import argparse
import asyncio
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import redis.asyncio
import redis.exceptions

from examples.outbox.orders import connect

STREAM = "orders.events"

# Errors that a restarting Redis causes: the relay waits and goes on.
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def redis_client(url: str) -> redis.asyncio.Redis:
    """A client of the Redis at `url` (redis://host:port/db)."""
    parts = urlsplit(url)
    database = int(parts.path.lstrip("/") or 0)
    return redis.asyncio.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=database)


async def relay_batch(
    connection: sqlite3.Connection,
    client: redis.asyncio.Redis,
    *,
    limit: int = 500,
    after_send: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Send up to `limit` unsent outbox rows, oldest first, then mark them sent; how many."""
    rows: list[tuple[int, str, str, str]] = connection.execute(
        "SELECT position, event_id, type, body FROM outbox WHERE sent = 0 ORDER BY position LIMIT ?",
        (limit,),
    ).fetchall()
    if not rows:
        return 0
    async with client.pipeline(transaction=False) as pipe:
        for _, event_id, kind, body in rows:
            pipe.xadd(STREAM, {"event_id": event_id, "type": kind, "body": body})
        await pipe.execute()
    if after_send is not None:
        await after_send(len(rows))
    connection.executemany(
        "UPDATE outbox SET sent = 1 WHERE position = ?", [(row[0],) for row in rows]
    )
    return len(rows)


async def run(
    orders_db: str,
    redis_url: str,
    *,
    stop: asyncio.Event | None = None,
    after_send: Callable[[int], Awaitable[None]] | None = None,
    idle: float = 0.02,
) -> None:
    """Relay until `stop` is set (forever without one), riding out Redis restarts."""
    connection = connect(orders_db)
    client = redis_client(redis_url)
    try:
        while stop is None or not stop.is_set():
            try:
                moved = await relay_batch(connection, client, after_send=after_send)
            except UNAVAILABLE:
                moved = 0
                await asyncio.sleep(0.1)
            if not moved:
                await asyncio.sleep(idle)
    finally:
        await client.aclose()
        connection.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("orders_db")
    parser.add_argument("redis_url")
    parser.add_argument(
        "--pause-after-send",
        action="store_true",
        help="for fault tests: after sending a batch, say so and wait before marking it sent",
    )
    arguments = parser.parse_args(argv)

    async def pause(count: int) -> None:
        print(f"sent {count}", flush=True)
        await asyncio.Event().wait()

    print("relay ready", flush=True)
    after_send = pause if arguments.pause_after_send else None
    asyncio.run(run(arguments.orders_db, arguments.redis_url, after_send=after_send))


if __name__ == "__main__":
    main(sys.argv[1:])
