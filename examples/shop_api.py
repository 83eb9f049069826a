"""A FastAPI service that publishes an aggregate's events inside the request, before it commits.

    uvicorn --factory examples.shop_api:create_app

`POST /orders` places an order: the `Order` aggregate records `OrderPlaced`, and the endpoint
publishes its events, then commits. dishka builds the handlers in the request's scope
(`resolve=container.get`), so they share the request's `AsyncSession`: their writes commit with
the order, or roll back with it. They run one after another, as one session requires; the app
refuses a publisher that may run them at once, unless each handler has a session of its own
(`session_per_handler=True`), which gives up that all-or-nothing commit.

A failure answers the same HTTP status whichever way the publisher reports it: an `OutOfStock`
is a 409 whether it comes bare (`SequentialEventPublisher()`) or inside an `ExceptionGroup`
(`SequentialEventPublisher(fail_fast=False)`, `GroupEventPublisher(fail_fast=False)`).

The database is the SQLite file that the environment variable SHOP_DATABASE names, or `shop.db`
in the current directory; a new one opens with 3 mugs in stock.
"""

import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from dishka import AsyncContainer, Provider, Scope, make_async_container
from dishka.integrations.fastapi import FromDishka, inject, setup_dishka
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import ForeignKey, select, update
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, reconstructor

from mediator import (
    EventPublisher,
    EventRegistry,
    GroupEventPublisher,
    IEvent,
    IPublisher,
    Mediator,
    SequentialEventPublisher,
)

OPENING_STOCK = {"mug": 3}


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPlaced(IEvent):
    order_id: int
    customer: str
    sku: str
    quantity: int


class OutOfStock(Exception):
    pass


class PaymentDeclined(Exception):
    pass


class Base(DeclarativeBase):
    pass


class Stock(Base):
    __tablename__ = "stock"

    sku: Mapped[str] = mapped_column(primary_key=True)
    quantity: Mapped[int]


class Order(Base):
    """The aggregate: it records what happened, and whoever saves it publishes that."""

    __tablename__ = "orders"

    order_id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str]
    sku: Mapped[str]
    quantity: Mapped[int]

    def __init__(self, customer: str, sku: str, quantity: int) -> None:
        super().__init__(customer=customer, sku=sku, quantity=quantity)
        self._no_events()

    @reconstructor  # SQLAlchemy calls it, rather than __init__, on an order read from the database
    def _no_events(self) -> None:
        self.events: list[IEvent] = []  # not a column: what happened, until it is published

    @classmethod
    async def place(cls, session: AsyncSession, customer: str, sku: str, quantity: int) -> "Order":
        order = cls(customer, sku, quantity)
        session.add(order)
        await session.flush()  # the database numbers the order, and its event carries the number
        order.events.append(
            OrderPlaced(order_id=order.order_id, customer=customer, sku=sku, quantity=quantity)
        )
        return order

    def pull_events(self) -> list[IEvent]:
        events = self.events
        self.events = []
        return events


class Confirmation(Base):
    __tablename__ = "confirmations"

    confirmation_id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey(Order.order_id))
    text: Mapped[str]


class ReserveStock:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def handle(self, event: OrderPlaced) -> None:
        # One statement checks and takes the stock, so two requests cannot both take the last mug.
        taken = update(Stock).where(Stock.sku == event.sku, Stock.quantity >= event.quantity)
        taken = taken.values(quantity=Stock.quantity - event.quantity)
        if await self._session.scalar(taken.returning(Stock.quantity)) is None:
            left = await self._session.scalar(select(Stock.quantity).where(Stock.sku == event.sku))
            raise OutOfStock(f"{event.quantity} of {event.sku} wanted, {left or 0} left")


class ChargeCustomer:
    async def handle(self, event: OrderPlaced) -> None:
        if event.customer == "declined":
            raise PaymentDeclined(f"the card of {event.customer} was declined")


class SendConfirmation:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def handle(self, event: OrderPlaced) -> None:
        text = f"order {event.order_id}: {event.quantity} of {event.sku}"
        self._session.add(Confirmation(order_id=event.order_id, text=text))
        # Written now, not at the endpoint's commit, which a session of the handler's own (see
        # Services) never sees.
        await self._session.flush()


registry = (
    EventRegistry()
    .bind(OrderPlaced, [ReserveStock, ChargeCustomer, SendConfirmation])
    .freeze()
)


async def open_shop(engine: AsyncEngine) -> None:
    """Creates the tables that are missing, and the opening stock of the items it has no row of."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
        rows = [{"sku": sku, "quantity": quantity} for sku, quantity in OPENING_STOCK.items()]
        await connection.execute(insert(Stock).values(rows).on_conflict_do_nothing())


class Services(Provider):
    """What dishka builds: the engine once; per request the session, the handlers, and the
    mediator that resolves them from the request's own container.

    With `session_per_handler=False` the endpoint and the handlers share one session per
    request: one transaction on one connection, which allows one operation at a time. With
    `session_per_handler=True` each of them gets a session of its own, which commits every
    statement at once: handlers may then run concurrently, and a failed request keeps the order
    and the work of the handlers that succeeded.
    """

    def __init__(
        self, database: str, publisher: EventPublisher, *, session_per_handler: bool = False
    ) -> None:
        super().__init__()
        self._database = database
        self._publisher = publisher
        self._session_per_handler = session_per_handler
        self.provide(self.engine, scope=Scope.APP)
        self.provide(self.sessions, scope=Scope.APP)
        # cache=False: every object that takes a session gets a new one.
        self.provide(self.session, scope=Scope.REQUEST, cache=not session_per_handler)
        self.provide_all(*registry.classes, scope=Scope.REQUEST)
        self.provide(self.events, scope=Scope.REQUEST)

    async def engine(self) -> AsyncIterator[AsyncEngine]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{self._database}")
        yield engine
        await engine.dispose()

    def sessions(self, engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
        if self._session_per_handler:
            # SQLite has one writer at a time: a handler's session could not write while the
            # request's transaction held the order, and would wait for it until it timed out.
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        return async_sessionmaker(engine, expire_on_commit=False)

    async def session(
        self, sessions: async_sessionmaker[AsyncSession]
    ) -> AsyncIterator[AsyncSession]:
        async with sessions() as session:  # closed, and what it did not commit rolled back
            yield session

    def events(self, container: AsyncContainer) -> IPublisher:
        return Mediator(registry, publisher=self._publisher, resolve=container.get)


class PlaceOrder(BaseModel):
    customer: str
    sku: str
    quantity: int


@inject
async def place_order(
    body: PlaceOrder, session: FromDishka[AsyncSession], events: FromDishka[IPublisher]
) -> dict[str, int]:
    async with session.begin():  # commits when the block ends, rolls back if it raises
        order = await Order.place(session, body.customer, body.sku, body.quantity)
        for event in order.pull_events():
            await events.publish(event)  # the handlers run here, before the commit
    return {"order_id": order.order_id}


# Each failure a handler may raise, and the status that answers it.
STATUSES: dict[type[Exception], int] = {OutOfStock: 409, PaymentDeclined: 402}


def answer(failures: Sequence[Exception]) -> JSONResponse:
    """One failure: its status. Several, which a publisher with fail_fast=False reports: a 500."""
    if len(failures) == 1:
        [failure] = failures
        for kind, status in STATUSES.items():
            if isinstance(failure, kind):
                return JSONResponse({"detail": str(failure)}, status_code=status)
    return JSONResponse({"detail": [str(failure) for failure in failures]}, status_code=500)


async def failed(request: Request, error: Exception) -> JSONResponse:
    return answer([error])


# FastAPI's exception_handler(OutOfStock) does not match an OutOfStock inside an ExceptionGroup,
# which a publisher with fail_fast=False raises, and the group publisher even for one failure;
# this handler opens the group. Registered on its own, with this parameter type, it gives every
# checker the members' type, where isinstance(error, ExceptionGroup) gives pyright a group of
# members of unknown type.
async def failed_together(request: Request, group: ExceptionGroup[Exception]) -> JSONResponse:
    return answer(group.exceptions)


def create_app(
    database: str | None = None,
    publisher: EventPublisher = SequentialEventPublisher(),
    *,
    session_per_handler: bool = False,
) -> FastAPI:
    """The shop on the SQLite file `database`: $SHOP_DATABASE by default, else shop.db here."""
    if not session_per_handler and not isinstance(publisher, SequentialEventPublisher):
        raise ValueError(
            f"{publisher!r} may run handlers concurrently, and these handlers share the request's "
            f"AsyncSession, which allows one operation at a time; pass SequentialEventPublisher(), "
            f"or session_per_handler=True to give each handler a session of its own"
        )
    if isinstance(publisher, GroupEventPublisher) and publisher.fail_fast:
        raise ValueError(
            f"{publisher!r} cancels the other handlers when one fails, in the middle of their "
            f"statements, which leaks their connections and leaves unknown whether their writes "
            f"committed; pass GroupEventPublisher(fail_fast=False)"
        )
    database = database or os.environ.get("SHOP_DATABASE", "shop.db")
    services = Services(database, publisher, session_per_handler=session_per_handler)
    container = make_async_container(services)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        await open_shop(await container.get(AsyncEngine))
        try:
            yield
        finally:
            await container.close()  # disposes of the engine

    app = FastAPI(lifespan=lifespan)
    app.post("/orders", status_code=201)(place_order)
    for kind in STATUSES:
        app.exception_handler(kind)(failed)
    app.exception_handler(ExceptionGroup)(failed_together)
    setup_dishka(container, app)
    return app
