"""What the relay and the billing service share as processes: a Redis client, riding out Redis
outages, and stopping on SIGINT or SIGTERM with one line."""

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.exceptions

_T = TypeVar("_T")

# Errors that an unreachable or restarting Redis causes: the services back off and go on.
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def redis_client(url: str) -> redis.asyncio.Redis:
    """A client of the Redis at `url` (redis://host:port/db).

    It retries a command once, at once, for a connection that went stale; a Redis that is down
    fails the command, so that the service's own loop can say so and back off (redis-py would
    otherwise retry in silence for seconds).
    """
    parts = urlsplit(url)
    return redis.asyncio.Redis(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(parts.path.lstrip("/") or 0),
        retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 1),
    )


class Outage:
    """Waits between attempts while Redis cannot be reached, and logs once per outage.

        except UNAVAILABLE as error:
            await outage.wait(error)  # 0.05 s, then twice as long each time, up to 2 s
        ...
        outage.over()  # after a success: logs that Redis is back, if it was away

    Cancelled while it waits, it raises `CancelledError` like any sleep.
    """

    __slots__ = ("_url", "_log", "_delay", "_since")

    def __init__(self, url: str, log: logging.Logger) -> None:
        self._url = url
        self._log = log
        self._delay = 0.0
        self._since: float | None = None

    async def wait(self, error: Exception) -> None:
        if self._since is None:
            self._since = time.monotonic()
            self._delay = 0.05
            self._log.warning("Redis at %s cannot be reached (%s); retrying", self._url, error)
        else:
            self._delay = min(self._delay * 2, 2.0)
        await asyncio.sleep(self._delay)

    def over(self) -> None:
        if self._since is not None:
            away = time.monotonic() - self._since
            self._log.info("Redis at %s is back after %.1f s; going on", self._url, away)
            self._since = None


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the work, and its clean-up ran."""

    def __init__(self, received: signal.Signals) -> None:
        super().__init__(f"stopped by {received.name}")
        self.signal = received


async def interruptible(start: Callable[[asyncio.Event], Awaitable[_T]], /) -> _T:
    """Await `start(stop)`, which the first SIGINT or SIGTERM stops; then raise `Interrupted`.

    The signal sets `stop` and cancels the task. Either ends the work: a loop that checks `stop`
    ends at its next turn even where a library swallowed the cancellation (Python 3.11's
    `asyncio.wait_for` does, when what it waits for is done in the same turn, and redis-py uses
    it to send). `Interrupted` comes once the work's clean-up, its `finally` blocks, ran.

    Later signals are ignored, for the rest of the process's life: a `finally` that stops
    processes is never cut short, nor are the last lines it prints on its way out. Other errors
    go through unchanged.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "interruptible() runs in a task"
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def interrupt(signum: signal.Signals) -> None:
        if not received:
            received.append(signum)
            stop.set()
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt, signum)
    try:
        result = await start(stop)
        if not received:
            return result
    except asyncio.CancelledError:
        if not received:
            raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            if received:
                signal.signal(signum, signal.SIG_IGN)
    # Cancelled, or ended by `stop` with the cancellation swallowed: either way, it was ours.
    task.uncancel()
    raise Interrupted(received[0])


def serve(name: str, start: Callable[[asyncio.Event], Awaitable[None]], /) -> None:
    """Run a service until SIGINT or SIGTERM, logging at INFO; then one line, no traceback.

    It prints "NAME ready" on stdout once the signals are handled: from then on a signal stops
    the service cleanly, which is what a process that started it waits for. `start(stop)` runs
    the service until `stop` is set.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger(name)

    async def announced(stop: asyncio.Event) -> None:
        print(f"{name} ready", flush=True)
        await start(stop)

    try:
        asyncio.run(interruptible(announced))
    except Interrupted as interrupted:
        log.info("%s", interrupted)
    except KeyboardInterrupt:
        log.info("stopped by SIGINT")  # before the signals were handled: nothing was running
