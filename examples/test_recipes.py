"""The recipes under both publishers: a time limit per handler, isolated handlers, and a unit of
work that publishes once it commits, on a real SQLite file through SQLAlchemy and aiosqlite."""

import asyncio
import logging
import sqlite3
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from examples.recipes import Isolated, TimeLimited, TimeoutPerHandler, UnitOfWork
from mediator import (
    ChainLimitError,
    EventPublisher,
    EventRegistry,
    GroupEventPublisher,
    IEvent,
    IEventHandler,
    Mediator,
    SequentialEventPublisher,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPlaced(IEvent):
    order_id: int
    customer: str = "ada"


class FollowUp(IEvent):
    """The base of the events that the handlers below leave as follow-ups."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Done(FollowUp):
    by: str


class CardDeclined(Exception):
    pass


def is_group(error: BaseException) -> TypeGuard[BaseExceptionGroup[BaseException]]:
    # Not isinstance at the call: pyright would narrow to a group of members of unknown type.
    return isinstance(error, BaseExceptionGroup)


def failures(error: BaseException) -> list[BaseException]:
    """What failed: the members of a group, or the one error raised bare."""
    return list(error.exceptions) if is_group(error) else [error]


def reports_bare(publisher: EventPublisher) -> bool:
    """Whether one failure reaches the caller bare: only `SequentialEventPublisher()` does that."""
    return isinstance(publisher, SequentialEventPublisher) and publisher.fail_fast


every_publisher = pytest.mark.parametrize(
    "publisher",
    [
        SequentialEventPublisher(),
        SequentialEventPublisher(fail_fast=False),
        GroupEventPublisher(),
        GroupEventPublisher(fail_fast=False),
    ],
    ids=["sequential", "sequential-collecting", "group", "group-collecting"],
)
both_publishers = pytest.mark.parametrize(
    "publisher", [SequentialEventPublisher(), GroupEventPublisher()], ids=["sequential", "group"]
)


# --- A time limit per handler ---------------------------------------------------------------------


class Fast(TimeLimited):
    timeout = 5.0

    def __init__(self) -> None:
        self.events: list[IEvent] = []

    async def handle(self, event: OrderPlaced) -> None:
        await asyncio.sleep(0)  # it waits, so that a limit of 0 would interrupt it
        self.events.append(Done(by="Fast"))


class Slow(TimeLimited):
    timeout = 0.01

    async def handle(self, event: OrderPlaced) -> None:
        await asyncio.sleep(30)  # should the limit not work, the test fails rather than hangs
        raise AssertionError("Slow ran past its limit")


class SaysNothing:
    """A handler with no time limit of its own: the middleware's default is its."""

    def __init__(self) -> None:
        self.events: list[IEvent] = []

    async def handle(self, event: OrderPlaced) -> None:
        await asyncio.sleep(0)
        self.events.append(Done(by="SaysNothing"))


def followed(log: list[IEvent]) -> type[IEventHandler[FollowUp]]:
    """A handler class of every follow-up, which appends it to `log`."""

    class Follow:
        async def handle(self, event: FollowUp) -> None:
            log.append(event)

    return Follow


@every_publisher
def test_a_handler_past_its_time_limit_fails_with_timeout_error(publisher: EventPublisher) -> None:
    registry = EventRegistry().bind(OrderPlaced, [Slow, Fast])
    mediator = Mediator(registry.bind_middleware(IEvent, [TimeoutPerHandler]), publisher=publisher)
    with pytest.raises((TimeoutError, ExceptionGroup)) as caught:
        asyncio.run(mediator.publish(OrderPlaced(order_id=1)))
    assert is_group(caught.value) is not reports_bare(publisher)
    [timed_out] = failures(caught.value)
    assert type(timed_out) is TimeoutError


@every_publisher
def test_handlers_within_their_time_limits_succeed_and_leave_their_follow_ups(
    publisher: EventPublisher,
) -> None:
    done: list[IEvent] = []
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [Fast, SaysNothing])
        .bind(FollowUp, [followed(done)])
        .bind_middleware(IEvent, [TimeoutPerHandler])
    )
    asyncio.run(Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=1)))
    assert done == [Done(by="Fast"), Done(by="SaysNothing")]


@every_publisher
def test_a_handler_that_says_nothing_gets_the_default_limit(publisher: EventPublisher) -> None:
    class WaitsLong:
        async def handle(self, event: OrderPlaced) -> None:
            await asyncio.sleep(30)
            raise AssertionError("WaitsLong ran past the default limit")

    class QuickDefault(TimeoutPerHandler):
        default = 0.01

    registry = EventRegistry().bind(OrderPlaced, [WaitsLong])
    registry.bind_middleware(IEvent, [QuickDefault])
    with pytest.raises((TimeoutError, ExceptionGroup)) as caught:
        asyncio.run(Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=1)))
    assert [type(error) for error in failures(caught.value)] == [TimeoutError]


def test_a_time_limited_handler_without_a_timeout_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="Forgetful inherits TimeLimited but sets no timeout"):
        type("Forgetful", (TimeLimited,), {})  # as `class Forgetful(TimeLimited): ...` does


def waits_until_cancelled(started: asyncio.Event) -> type[IEventHandler[OrderPlaced]]:
    """A handler class with a long time limit, which sets `started`, then waits until cancelled."""

    class Waits(TimeLimited):
        timeout = 60.0

        async def handle(self, event: OrderPlaced) -> None:
            started.set()
            await asyncio.Event().wait()

    return Waits


@every_publisher
def test_cancelling_the_caller_during_a_time_limited_handler_is_a_cancellation(
    publisher: EventPublisher,
) -> None:
    started = asyncio.Event()
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [waits_until_cancelled(started)])
        .bind_middleware(IEvent, [TimeoutPerHandler])
    )

    async def caller() -> None:
        publish = asyncio.create_task(
            Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=1))
        )
        await started.wait()
        publish.cancel()
        await asyncio.wait([publish])
        assert publish.cancelled(), f"the caller got {publish.exception()!r}"

    asyncio.run(caller())


@every_publisher
def test_a_timeout_around_the_publish_raises_timeout_error_when_it_expires(
    publisher: EventPublisher,
) -> None:
    started = asyncio.Event()
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [waits_until_cancelled(started)])
        .bind_middleware(IEvent, [TimeoutPerHandler])
    )

    async def expire(timeout: asyncio.Timeout) -> None:
        await started.wait()
        timeout.reschedule(asyncio.get_running_loop().time())

    async def caller() -> int:
        whole = asyncio.timeout(None)
        expiry = asyncio.create_task(expire(whole))
        with pytest.raises(TimeoutError):
            async with whole:
                await Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=1))
        await expiry
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert asyncio.run(caller()) == 0
    assert started.is_set()


# --- Isolated handlers ----------------------------------------------------------------------------


class Reserve:
    def __init__(self) -> None:
        self.events: list[IEvent] = []

    async def handle(self, event: OrderPlaced) -> None:
        self.events.append(Done(by="Reserve"))


class Charge:
    def __init__(self) -> None:
        self.events: list[IEvent] = []

    async def handle(self, event: OrderPlaced) -> None:
        self.events.append(Done(by="Charge"))  # left, then the failure: it must not be published
        raise CardDeclined(f"order {event.order_id}")


class Notify:
    def __init__(self) -> None:
        self.events: list[IEvent] = []

    async def handle(self, event: OrderPlaced) -> None:
        await asyncio.sleep(0)  # still running when Charge fails, under the group publisher
        self.events.append(Done(by="Notify"))


def isolated_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "examples.recipes"]


@every_publisher
def test_an_isolated_failure_is_logged_and_the_others_and_their_follow_ups_go_on(
    publisher: EventPublisher, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[IEvent] = []
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [Reserve, Charge, Notify])
        .bind(FollowUp, [followed(done)])
        .bind_middleware(IEvent, [Isolated])
    )
    asyncio.run(Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=3)))
    assert done == [Done(by="Reserve"), Done(by="Notify")]
    [record] = isolated_records(caplog)
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "Charge failed on OrderPlaced(order_id=3, customer='ada'); the other handlers go on"
    )
    assert logging.Formatter().format(record).endswith("CardDeclined: order 3")  # its traceback


@every_publisher
def test_cancelling_the_caller_during_an_isolated_handler_is_a_cancellation(
    publisher: EventPublisher, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()
    done: list[IEvent] = []
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [Reserve, waits_until_cancelled(started)])
        .bind(FollowUp, [followed(done)])
        .bind_middleware(IEvent, [Isolated])
    )

    async def caller() -> None:
        publish = asyncio.create_task(
            Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=4))
        )
        await started.wait()
        publish.cancel()
        await asyncio.wait([publish])
        assert publish.cancelled(), f"the caller got {publish.exception()!r}"

    asyncio.run(caller())
    assert done == []  # the event did not finish, so none of its follow-ups is published
    assert isolated_records(caplog) == []


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
@every_publisher
def test_isolation_lets_keyboard_interrupt_and_system_exit_through(
    publisher: EventPublisher,
    error_type: type[BaseException],
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Interrupted:
        async def handle(self, event: OrderPlaced) -> None:
            raise error_type()

    registry = EventRegistry().bind(OrderPlaced, [Interrupted]).bind_middleware(IEvent, [Isolated])
    with pytest.raises(error_type):
        asyncio.run(Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=5)))
    assert isolated_records(caplog) == []


@every_publisher
def test_isolation_lets_a_runaway_chain_through(
    publisher: EventPublisher, caplog: pytest.LogCaptureFixture
) -> None:
    class Echo:
        async def handle(self, event: OrderPlaced) -> None:
            await mediator.publish(event)  # a cycle: each publish starts another

    registry = EventRegistry().bind(OrderPlaced, [Echo]).bind_middleware(IEvent, [Isolated])
    mediator = Mediator(registry, publisher=publisher, max_depth=3)
    with pytest.raises(ChainLimitError):
        asyncio.run(mediator.publish(OrderPlaced(order_id=6)))
    assert isolated_records(caplog) == []


@every_publisher
def test_isolation_outside_the_time_limit_logs_a_handler_that_overran(
    publisher: EventPublisher, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[IEvent] = []
    registry = (
        EventRegistry()
        .bind(OrderPlaced, [Slow, Fast])
        .bind(FollowUp, [followed(done)])
        .bind_middleware(IEvent, [Isolated, TimeoutPerHandler])
    )
    asyncio.run(Mediator(registry, publisher=publisher).publish(OrderPlaced(order_id=7)))
    assert done == [Done(by="Fast")]
    [record] = isolated_records(caplog)
    assert record.getMessage().startswith("Slow failed on OrderPlaced(order_id=7")
    assert logging.Formatter().format(record).endswith("\nTimeoutError")


# --- Publish after commit -------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    order_id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str]


@asynccontextmanager
async def database_at(
    path: Path, *, busy_timeout: float = 5.0
) -> AsyncGenerator[async_sessionmaker[AsyncSession], None]:
    """Sessions on the SQLite file at `path`, its table made; the engine disposed of at the end.

    `busy_timeout` is how long a statement waits for another connection's lock before it fails.
    """
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_async_engine(url, connect_args={"timeout": busy_timeout})
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        # Not expired on commit: the tests read an order's number after its work committed.
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


async def place(work: UnitOfWork, customer: str) -> None:
    """What a use case does inside a unit of work: save an order, record that it was placed."""
    order = Order(customer=customer)
    work.session.add(order)
    await work.session.flush()  # the database numbers the order, and its event carries the number
    work.record(OrderPlaced(order_id=order.order_id, customer=customer))


def committed(path: Path) -> list[tuple[int, str]]:
    """The orders that a connection of its own sees: the standard library's sqlite3."""
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT order_id, customer FROM orders ORDER BY 1").fetchall()


def recorder(published: list[IEvent]) -> type[IEventHandler[OrderPlaced]]:
    """A handler class of every order placed, which appends it to `published`."""

    class Record:
        async def handle(self, event: OrderPlaced) -> None:
            published.append(event)

    return Record


@both_publishers
def test_the_recorded_events_are_published_in_order_once_the_work_commits(
    publisher: EventPublisher, tmp_path: Path
) -> None:
    published: list[IEvent] = []
    registry = EventRegistry().bind(OrderPlaced, [recorder(published)])
    mediator = Mediator(registry, publisher=publisher)

    async def use_case() -> None:
        async with database_at(tmp_path / "shop.db") as sessions:
            async with UnitOfWork(sessions(), mediator) as work:
                await place(work, "ada")
                await place(work, "alan")
                assert published == []  # not yet: nothing is committed inside the block

    asyncio.run(use_case())
    assert published == [
        OrderPlaced(order_id=1, customer="ada"),
        OrderPlaced(order_id=2, customer="alan"),
    ]
    assert committed(tmp_path / "shop.db") == [(1, "ada"), (2, "alan")]


@both_publishers
def test_a_handler_sees_the_committed_row_through_a_connection_of_its_own(
    publisher: EventPublisher, tmp_path: Path
) -> None:
    seen: list[list[tuple[int, str]]] = []

    class ReadBack:
        async def handle(self, event: OrderPlaced) -> None:
            seen.append(committed(tmp_path / "shop.db"))

    mediator = Mediator(EventRegistry().bind(OrderPlaced, [ReadBack]), publisher=publisher)

    async def use_case() -> None:
        async with database_at(tmp_path / "shop.db") as sessions:
            async with UnitOfWork(sessions(), mediator) as work:
                await place(work, "ada")

    asyncio.run(use_case())
    assert seen == [[(1, "ada")]]


@both_publishers
def test_an_exception_in_the_block_rolls_back_and_publishes_nothing(
    publisher: EventPublisher, tmp_path: Path
) -> None:
    published: list[IEvent] = []
    registry = EventRegistry().bind(OrderPlaced, [recorder(published)])
    mediator = Mediator(registry, publisher=publisher)

    async def use_case() -> None:
        async with database_at(tmp_path / "shop.db") as sessions:
            with pytest.raises(CardDeclined):
                async with UnitOfWork(sessions(), mediator) as work:
                    await place(work, "ada")
                    raise CardDeclined("order 1")

    asyncio.run(use_case())
    assert published == []
    assert committed(tmp_path / "shop.db") == []


@both_publishers
def test_a_cancelled_block_rolls_back_and_publishes_nothing(
    publisher: EventPublisher, tmp_path: Path
) -> None:
    published: list[IEvent] = []
    registry = EventRegistry().bind(OrderPlaced, [recorder(published)])
    mediator = Mediator(registry, publisher=publisher)
    placed = asyncio.Event()

    async def use_case(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with UnitOfWork(sessions(), mediator) as work:
            await place(work, "ada")
            placed.set()
            await asyncio.Event().wait()

    async def caller() -> None:
        async with database_at(tmp_path / "shop.db") as sessions:
            task = asyncio.create_task(use_case(sessions))
            await placed.wait()
            task.cancel()
            await asyncio.wait([task])
            assert task.cancelled()

    asyncio.run(caller())
    assert published == []
    assert committed(tmp_path / "shop.db") == []


@both_publishers
def test_a_commit_that_sqlite_refuses_publishes_nothing(
    publisher: EventPublisher, tmp_path: Path
) -> None:
    """A reader amid a transaction holds SQLite's shared lock, so the COMMIT itself fails."""
    published: list[IEvent] = []
    registry = EventRegistry().bind(OrderPlaced, [recorder(published)])
    mediator = Mediator(registry, publisher=publisher)

    async def use_case() -> None:
        async with database_at(tmp_path / "shop.db", busy_timeout=0.05) as sessions:
            with closing(sqlite3.connect(tmp_path / "shop.db", isolation_level=None)) as reader:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM orders").fetchall()
                with pytest.raises(OperationalError, match="database is locked"):
                    async with UnitOfWork(sessions(), mediator) as work:
                        await place(work, "ada")
                reader.execute("ROLLBACK")

    asyncio.run(use_case())
    assert published == []
    assert committed(tmp_path / "shop.db") == []


@both_publishers
def test_a_commit_that_breaks_a_constraint_publishes_nothing(
    publisher: EventPublisher, tmp_path: Path
) -> None:
    """The commit flushes what the block added, and a duplicate key fails there."""
    published: list[IEvent] = []
    registry = EventRegistry().bind(OrderPlaced, [recorder(published)])
    mediator = Mediator(registry, publisher=publisher)

    async def use_case() -> None:
        async with database_at(tmp_path / "shop.db") as sessions:
            async with UnitOfWork(sessions(), mediator) as work:
                await place(work, "ada")
            with pytest.raises(IntegrityError):
                async with UnitOfWork(sessions(), mediator) as work:
                    work.session.add(Order(order_id=1, customer="alan"))  # not flushed in here
                    work.record(OrderPlaced(order_id=1, customer="alan"))

    asyncio.run(use_case())
    assert published == [OrderPlaced(order_id=1, customer="ada")]
    assert committed(tmp_path / "shop.db") == [(1, "ada")]


@both_publishers
def test_a_handlers_failure_after_the_commit_reaches_the_caller_and_the_commit_stands(
    publisher: EventPublisher, tmp_path: Path
) -> None:
    published: list[IEvent] = []

    class Declines:
        async def handle(self, event: OrderPlaced) -> None:
            if event.customer == "declined":
                raise CardDeclined(f"order {event.order_id}")

    registry = EventRegistry().bind(OrderPlaced, [Declines, recorder(published)])
    mediator = Mediator(registry, publisher=publisher)

    async def use_case() -> None:
        async with database_at(tmp_path / "shop.db") as sessions:
            with pytest.raises((CardDeclined, ExceptionGroup)) as caught:
                async with UnitOfWork(sessions(), mediator) as work:
                    await place(work, "declined")
                    await place(work, "ada")
            assert [repr(error) for error in failures(caught.value)] == ["CardDeclined('order 1')"]

    asyncio.run(use_case())
    assert OrderPlaced(order_id=2, customer="ada") not in published  # the first one failed
    assert committed(tmp_path / "shop.db") == [(1, "declined"), (2, "ada")]
