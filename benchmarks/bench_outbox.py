"""Orders through the outbox, the relay, a real Redis and the billing service, end to end.

    python benchmarks/bench_outbox.py                # 10,000 orders, as fast as they go
    python benchmarks/bench_outbox.py --rate 400     # 10,000 orders, 400 a second
    python benchmarks/bench_outbox.py --orders 200   # a smoke run

Needs the examples' extra and redis-server. It starts its own redis-server on 127.0.0.1; the
relay and the billing service run as processes of their own, as they would in production, and
this process places the orders, each in a transaction of its own, as fast as it can or at
`--rate` a second. It prints events per second, from the first order's commit to the last order
handled, and the latency from an order's commit to the end of its handler's transaction, median
and p99. At full speed orders are placed faster than they are billed, so the latency is mostly
the queue's; a rate below the throughput shows the latency of the path itself.
"""

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

# Run as a script from anywhere: the code under test is the repository's own.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.outbox import billing, orders  # noqa: E402
from examples.redis_server import RedisServer  # noqa: E402


async def spawn(module: str, *arguments: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *arguments,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.readline(), 30)  # "... ready"
    return process


def handled(billing_db: str) -> dict[str, float]:
    with closing(sqlite3.connect(billing_db)) as connection:
        rows: list[tuple[str, float]] = connection.execute(
            "SELECT event_id, handled_at FROM handled"
        ).fetchall()
    return dict(rows)


def committed(orders_db: str) -> dict[str, float]:
    with closing(sqlite3.connect(orders_db)) as connection:
        rows: list[tuple[str, str]] = connection.execute("SELECT event_id, body FROM outbox").fetchall()
    return {event_id: float(json.loads(body)["placed_at"]) for event_id, body in rows}


async def main(count: int, rate: float | None) -> int:
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder) / "redis") as server:
        orders_db, billing_db = f"{folder}/orders.db", f"{folder}/billing.db"
        orders.connect(orders_db).close()
        billing.connect(billing_db).close()
        relay = await spawn("examples.outbox.relay", orders_db, server.url)
        consumer = await spawn(
            "examples.outbox.billing", billing_db, server.url, "--consumer", "billing-1"
        )
        try:
            start = time.monotonic()
            with closing(orders.connect(orders_db)) as connection:
                service = orders.OrderService(connection)
                for number in range(count):
                    if rate is not None:
                        await asyncio.sleep(max(0.0, start + number / rate - time.monotonic()))
                    await service.place_order(f"customer {number}", 100 + number)
            placing = time.monotonic() - start
            deadline = time.monotonic() + 600
            while len(done := handled(billing_db)) < count:
                if time.monotonic() > deadline:
                    print(f"only {len(done)} of {count} orders were handled in ten minutes")
                    return 1
                await asyncio.sleep(0.05)
        finally:
            for process in (relay, consumer):
                process.kill()
                await process.wait()
        placed = committed(orders_db)
    latencies = sorted((done[event_id] - placed[event_id]) * 1000 for event_id in placed)
    seconds = max(done.values()) - min(placed.values())
    p99 = latencies[min(len(latencies) - 1, round(len(latencies) * 0.99))]
    pace = "as fast as they go" if rate is None else f"{rate:,.0f} a second"
    print(f"mediator outbox benchmark, Python {sys.version.split()[0]}, orders placed {pace}")
    print(f"{count:,} orders placed, relayed through Redis and billed in {seconds:.1f} s")
    print(f"placing: {count / placing:,.0f} orders per second, each its own transaction")
    print(f"throughput: {count / seconds:,.0f} events per second, from first commit to last handled")
    print(f"latency from commit to handled: median {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms")
    return 0 if len(done) == count == len(placed) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--rate", type=float, help="orders a second; as fast as they go if unset")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.orders, arguments.rate)))
