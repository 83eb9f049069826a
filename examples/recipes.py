"""Three recipes to copy: a time limit per handler, isolated handlers, and publish after commit.

    registry.bind_middleware(IEvent, [Isolated, TimeoutPerHandler])

    async with UnitOfWork(sessions(), mediator) as work:
        work.session.add(order)
        work.record(OrderPlaced(order_id=order.order_id))

`TimeoutPerHandler` is middleware that gives each handler a time limit, its class's own
(`TimeLimited`) or a default. `Isolated` is middleware that logs a handler's failure and swallows
it, so that the other handlers and the event's follow-ups go on. `UnitOfWork` publishes the
events recorded in a SQLAlchemy transaction once it has committed, and none if it rolls back.
Each lets a cancellation through untouched. examples/test_recipes.py proves them under both
publishers.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ClassVar, Self

from sqlalchemy.ext.asyncio import AsyncSession

from mediator import ChainLimitError, IEvent, IPublisher

CallNext = Callable[[], Awaitable[None]]

logger = logging.getLogger(__name__)


# --- A time limit per handler ---------------------------------------------------------------------


class TimeLimited:
    """Inherit it in a handler and set the handler's time limit, in seconds, in its class.

        class ChargeCard(TimeLimited):
            timeout = 2.0

            async def handle(self, event: OrderPlaced) -> None: ...

    A class that inherits it without a `timeout` is refused when it is defined.
    """

    __slots__ = ()  # so that a handler with `__slots__` of its own stays without a `__dict__`
    timeout: ClassVar[float]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if not hasattr(cls, "timeout"):
            raise TypeError(
                f"{cls.__qualname__} inherits TimeLimited but sets no timeout; "
                f"write `timeout = 2.0`, in seconds, in its class"
            )


class TimeoutPerHandler:
    """Middleware: a handler still running past its time limit is cancelled, and fails.

    The limit is the handler class's `timeout` if it is `TimeLimited`, else `default`. Past it,
    the handler is cancelled where it waits and raises `TimeoutError`, which the publisher
    reports as any failure: bare under `SequentialEventPublisher()`, in an `ExceptionGroup` under
    `fail_fast=False` and under `GroupEventPublisher`. A cancellation of the caller stays a
    `CancelledError`, and an `asyncio.timeout` around the publish still raises `TimeoutError` when
    it expires: `asyncio.timeout` tells its own cancellation from the others. A handler that never
    awaits cannot be interrupted. Subclass it with another `default` to change that one.
    """

    __slots__ = ()
    default: ClassVar[float] = 10.0  # for handlers that do not say

    async def handle(self, event: IEvent, handler: object, call_next: CallNext, /) -> None:
        seconds = type(handler).timeout if isinstance(handler, TimeLimited) else self.default
        async with asyncio.timeout(seconds):
            await call_next()


# --- Isolated handlers ----------------------------------------------------------------------------


class Isolated:
    """Middleware: logs a handler's failure and swallows it, so that the publish goes on.

    The other handlers run, and the event's follow-ups are published: those of the handlers that
    succeeded, not those of the one that failed. The caller never learns of the failure, only the
    log does: isolate a handler whose work may be lost, a notification say, never one whose work
    must happen. What is not an `Exception` (a `CancelledError`, `KeyboardInterrupt`,
    `SystemExit`) goes through, and so does a `ChainLimitError`: a runaway chain is a bug in the
    bindings, not one handler's bad day. Bound outside `TimeoutPerHandler`, it logs a handler
    that overran too.
    """

    __slots__ = ()

    async def handle(self, event: IEvent, handler: object, call_next: CallNext, /) -> None:
        try:
            await call_next()
        except ChainLimitError:
            raise
        except Exception:
            name = type(handler).__qualname__
            logger.exception("%s failed on %r; the other handlers go on", name, event)


# --- Publish after commit -------------------------------------------------------------------------


class UnitOfWork:
    """A transaction on an `AsyncSession`, whose recorded events are published once it commits.

        async with UnitOfWork(sessions(), mediator) as work:
            work.session.add(order)
            work.record(OrderPlaced(order_id=order.order_id))

    Leaving the block commits, closes the session, then publishes the recorded events, in the
    order recorded: each handler sees what its event says happened. An exception in the block, a
    cancellation too, rolls back and publishes nothing; so does a commit that fails, whose error
    propagates. A handler's failure after the commit propagates too, and the events after it are
    not published; the commit stands. An event that must reach its handlers even if the process
    dies right after the commit belongs in an outbox (examples/outbox).
    """

    __slots__ = ("session", "_publisher", "_events")

    def __init__(self, session: AsyncSession, publisher: IPublisher) -> None:
        self.session = session
        self._publisher = publisher
        self._events: list[IEvent] = []

    def record(self, event: IEvent, /) -> None:
        """Publish `event` once the work commits; never, if it rolls back."""
        self._events.append(event)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        events = self._events
        self._events = []  # taken now, so that none is published twice
        async with self.session:  # closes it on the way out, rolling back what did not commit
            if error is not None:
                return  # the block failed: what it recorded did not happen
            await self.session.commit()  # if this raises, nothing is published
        for event in events:
            await self._publisher.publish(event)
