"""The relay: moves outbox rows to a Redis Stream in order, then marks them sent.

It sends before it marks: a relay that dies in between sends those rows again once it restarts,
so the stream may carry an event twice but never loses one, and the billing service, which
handles each event id once, makes a second copy harmless.

It logs each batch it sends. While Redis cannot be reached it says so once, tries again less and
less often (up to every 2 s), and says when Redis is back. Ctrl-C or SIGTERM stops it.
"""

import argparse
import asyncio
import logging
import sqlite3
import sys
from collections.abc import Awaitable, Callable

import redis.asyncio

from examples.outbox import RUN_ALONE
from examples.outbox.orders import connect
from examples.outbox.service import UNAVAILABLE, Outage, redis_client, serve

STREAM = "orders.events"

log = logging.getLogger("relay")


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
    connection.execute("BEGIN IMMEDIATE")  # one transaction, so one fsync, for the batch
    connection.executemany(
        "UPDATE outbox SET sent = 1 WHERE position = ?", [(row[0],) for row in rows]
    )
    connection.execute("COMMIT")
    return len(rows)


async def run(
    orders_db: str,
    redis_url: str,
    *,
    stop: asyncio.Event | None = None,
    after_send: Callable[[int], Awaitable[None]] | None = None,
    idle: float = 0.02,
) -> None:
    """Relay until `stop` is set (forever without one), riding out Redis outages."""
    connection = connect(orders_db)
    client = redis_client(redis_url)
    outage = Outage(redis_url, log)
    log.info("relaying the outbox of %s to the stream %s at %s", orders_db, STREAM, redis_url)
    try:
        while stop is None or not stop.is_set():
            try:
                moved = await relay_batch(connection, client, after_send=after_send)
            except UNAVAILABLE as error:
                await outage.wait(error)
                continue
            outage.over()
            if moved:
                log.info("events sent: %d", moved)
            else:
                await asyncio.sleep(idle)
    finally:
        await client.aclose()
        connection.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.outbox.relay",
        description=__doc__,
        epilog=RUN_ALONE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "orders_db", metavar="ORDERS_DB", help="the order service's SQLite file, made if missing"
    )
    parser.add_argument(
        "redis_url", metavar="REDIS_URL", help="the Redis to send to: redis://127.0.0.1:6379/0"
    )
    parser.add_argument(
        "--pause-after-send",
        action="store_true",
        help="for fault tests: after sending a batch, say so and wait before marking it sent",
    )
    arguments = parser.parse_args(argv)

    async def pause(count: int) -> None:
        print(f"sent {count}", flush=True)
        await asyncio.Event().wait()

    after_send = pause if arguments.pause_after_send else None
    serve(
        "relay",
        lambda stop: run(
            arguments.orders_db, arguments.redis_url, stop=stop, after_send=after_send
        ),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
