"""The shop on a real SQLite file, through httpx: its statuses, and what each request leaves in
the database when the handlers share the request's session, or each has a session of its own."""

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from examples.shop_api import (
    ChargeCustomer,
    Order,
    OrderPlaced,
    ReserveStock,
    SendConfirmation,
    create_app,
    open_shop,
)
from mediator import EventPublisher, GroupEventPublisher, IEventHandler, SequentialEventPublisher

ROOT = Path(__file__).resolve().parent.parent
Body = dict[str, str | int]
Rows = dict[str, list[tuple[object, ...]]]

# What a new database holds: 3 mugs, no order, no confirmation.
OPENED: Rows = {"stock": [("mug", 3)], "orders": [], "confirmations": []}

# Handlers that share the request's session, one after another, under either setting.
shared = pytest.mark.parametrize(
    "publisher",
    [SequentialEventPublisher(), SequentialEventPublisher(fail_fast=False)],
    ids=["sequential", "sequential-collecting"],
)
# ...and handlers that run at once, each with a session of its own.
arrangements = pytest.mark.parametrize(
    ("publisher", "session_per_handler"),
    [
        (SequentialEventPublisher(), False),
        (SequentialEventPublisher(fail_fast=False), False),
        (GroupEventPublisher(fail_fast=False), True),
    ],
    ids=["sequential", "sequential-collecting", "group-collecting-session-per-handler"],
)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "shop.db"


def post(
    database: Path,
    *orders: Body,
    publisher: EventPublisher = SequentialEventPublisher(),
    session_per_handler: bool = False,
) -> list[httpx.Response]:
    """POST each order in turn to a new app on `database`, which opens and closes as a server
    opens and closes it, and return the responses."""

    async def client() -> list[httpx.Response]:
        app = create_app(str(database), publisher, session_per_handler=session_per_handler)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://shop") as shop,
        ):
            return [await shop.post("/orders", json=order) for order in orders]

    return asyncio.run(client())


def stored(database: Path) -> Rows:
    """Every row of the shop's tables, read with the standard library's sqlite3."""
    with closing(sqlite3.connect(database)) as connection:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in OPENED
        }


@arrangements
def test_placing_an_order_commits_it_with_the_work_of_its_handlers(
    publisher: EventPublisher, session_per_handler: bool, database: Path
) -> None:
    order: Body = {"customer": "ada", "sku": "mug", "quantity": 2}
    [response] = post(database, order, publisher=publisher, session_per_handler=session_per_handler)
    assert (response.status_code, response.json()) == (201, {"order_id": 1})
    assert stored(database) == {
        "stock": [("mug", 1)],
        "orders": [(1, "ada", "mug", 2)],
        "confirmations": [(1, 1, "order 1: 2 of mug")],
    }


@arrangements
def test_an_item_out_of_stock_is_a_409(
    publisher: EventPublisher, session_per_handler: bool, database: Path
) -> None:
    order: Body = {"customer": "ada", "sku": "mug", "quantity": 5}
    [response] = post(database, order, publisher=publisher, session_per_handler=session_per_handler)
    assert (response.status_code, response.json()) == (409, {"detail": "5 of mug wanted, 3 left"})


@arrangements
def test_a_declined_card_is_a_402(
    publisher: EventPublisher, session_per_handler: bool, database: Path
) -> None:
    order: Body = {"customer": "declined", "sku": "mug", "quantity": 1}
    [response] = post(database, order, publisher=publisher, session_per_handler=session_per_handler)
    assert (response.status_code, response.json()) == (
        402,
        {"detail": "the card of declined was declined"},
    )


@pytest.mark.parametrize(
    ("publisher", "session_per_handler"),
    [
        (GroupEventPublisher(fail_fast=False), True),
        (SequentialEventPublisher(fail_fast=False), False),
    ],
    ids=["group-collecting-session-per-handler", "sequential-collecting"],
)
def test_two_handlers_failing_are_a_500_that_names_both(
    publisher: EventPublisher, session_per_handler: bool, database: Path
) -> None:
    order: Body = {"customer": "declined", "sku": "mug", "quantity": 5}
    [response] = post(database, order, publisher=publisher, session_per_handler=session_per_handler)
    assert response.status_code == 500
    assert sorted(response.json()["detail"]) == [
        "5 of mug wanted, 3 left",
        "the card of declined was declined",
    ]


@shared
def test_a_failed_request_leaves_nothing_behind(publisher: EventPublisher, database: Path) -> None:
    """The order, and the mug reserved before the card was declined, roll back with the request."""
    declined: Body = {"customer": "declined", "sku": "mug", "quantity": 1}
    too_many: Body = {"customer": "ada", "sku": "mug", "quantity": 5}
    responses = post(database, declined, too_many, publisher=publisher)
    assert [response.status_code for response in responses] == [402, 409]
    assert stored(database) == OPENED


@shared
def test_each_request_has_its_own_transaction_which_its_handlers_share(
    publisher: EventPublisher, database: Path
) -> None:
    responses = post(
        database,
        {"customer": "ada", "sku": "mug", "quantity": 2},
        {"customer": "alan", "sku": "mug", "quantity": 2},
        {"customer": "grace", "sku": "mug", "quantity": 1},
        publisher=publisher,
    )
    assert [response.status_code for response in responses] == [201, 409, 201]
    assert stored(database) == {
        "stock": [("mug", 0)],
        "orders": [(1, "ada", "mug", 2), (2, "grace", "mug", 1)],
        "confirmations": [(1, 1, "order 1: 2 of mug"), (2, 2, "order 2: 1 of mug")],
    }


def test_a_session_per_handler_keeps_the_work_of_the_others_when_one_fails(
    database: Path,
) -> None:
    """What running the handlers at once costs: each commits on its own, so a declined card
    keeps the order, the mug reserved for it and its confirmation."""
    order: Body = {"customer": "declined", "sku": "mug", "quantity": 1}
    publisher = GroupEventPublisher(fail_fast=False)
    [response] = post(database, order, publisher=publisher, session_per_handler=True)
    assert response.status_code == 402
    assert stored(database) == {
        "stock": [("mug", 2)],
        "orders": [(1, "declined", "mug", 1)],
        "confirmations": [(1, 1, "order 1: 1 of mug")],
    }


@pytest.mark.parametrize(
    "publisher",
    [GroupEventPublisher(fail_fast=False), GroupEventPublisher(max_concurrency=4)],
    ids=["group-collecting", "group-of-4"],
)
def test_handlers_that_share_a_session_refuse_a_publisher_that_may_run_them_at_once(
    publisher: EventPublisher, database: Path
) -> None:
    with pytest.raises(ValueError, match="these handlers share the request's AsyncSession"):
        create_app(str(database), publisher)


def test_a_session_per_handler_refuses_a_publisher_that_cancels_handlers_mid_statement(
    database: Path,
) -> None:
    publisher = GroupEventPublisher(max_concurrency=4)
    with pytest.raises(ValueError, match=r"cancels the other handlers when one fails"):
        create_app(str(database), publisher, session_per_handler=True)


def test_sqlalchemy_notices_a_session_shared_by_concurrent_handlers_only_while_it_connects(
    database: Path,
) -> None:
    """Why the app refuses such a publisher itself: the endpoint flushes the order before any
    handler runs, so its session is connected, and from then on SQLAlchemy lets two handlers'
    statements interleave on it without a word."""

    async def publish_on_one_session(place_the_order_first: bool) -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{database}")
        await open_shop(engine)
        await engine.dispose()  # no connection left in the pool: the session opens a new one
        try:
            async with AsyncSession(engine) as session:
                if place_the_order_first:
                    await Order.place(session, "ada", "mug", 1)
                handlers: list[IEventHandler[OrderPlaced]] = [
                    ReserveStock(session),
                    ChargeCustomer(),
                    SendConfirmation(session),
                ]
                event = OrderPlaced(order_id=1, customer="ada", sku="mug", quantity=1)
                await GroupEventPublisher(fail_fast=False)(handlers, event)
        finally:
            await engine.dispose()

    with pytest.raises(ExceptionGroup) as refused:
        asyncio.run(publish_on_one_session(place_the_order_first=False))
    assert refused.group_contains(
        InvalidRequestError,
        match="This session is provisioning a new connection; concurrent operations are not "
        "permitted",
    )
    asyncio.run(publish_on_one_session(place_the_order_first=True))


def test_the_uvicorn_command_serves_the_shop_on_the_file_that_shop_database_names(
    database: Path, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "uvicorn", "--factory", "examples.shop_api:create_app"]
    command += ["--host", "127.0.0.1", "--port", "0"]  # a free port, which uvicorn logs
    command += ["--app-dir", str(ROOT)]  # run from elsewhere, where no shop.db may appear
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**os.environ, "SHOP_DATABASE": str(database)}
    with subprocess.Popen(
        command,
        cwd=elsewhere,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stderr is not None
        log: list[str] = []
        try:
            for line in server.stderr:  # uvicorn logs to stderr, this line once it listens
                log.append(line)
                if listening := re.search(r"Uvicorn running on (http://\S+)", line):
                    break
            else:
                pytest.fail("uvicorn ended before it listened:\n" + "".join(log))
            with httpx.Client(base_url=listening[1]) as shop:
                order: Body = {"customer": "ada", "sku": "mug", "quantity": 2}
                responses = [shop.post("/orders", json=order) for _ in range(2)]
        finally:
            server.send_signal(signal.SIGINT)  # what Ctrl-C sends: a graceful shutdown
            try:
                log.append(server.communicate(timeout=30)[1])
            except subprocess.TimeoutExpired:
                server.kill()
                raise
    assert server.returncode == 0, "".join(log)
    assert "Application shutdown complete." in "".join(log), "".join(log)
    assert [(response.status_code, response.json()) for response in responses] == [
        (201, {"order_id": 1}),
        (409, {"detail": "2 of mug wanted, 1 left"}),
    ]
    assert stored(database)["stock"] == [("mug", 1)]
    assert list(elsewhere.iterdir()) == []
