"""A FastAPI service that publishes an aggregate's events inside the request, before it answers.

    uvicorn --factory examples.shop_api:create_app      # with any ASGI server you like

`POST /orders` places an order: the `Order` aggregate records `OrderPlaced`, and the endpoint
publishes its events, then commits the request's `Session`. The handlers are built by dishka in
the request's scope (`resolve=container.get`), so they share the request's session. A failure
answers the same HTTP status under either publisher: an `OutOfStock` is a 409 whether it comes
bare (`SequentialEventPublisher`) or inside an `ExceptionGroup` (`GroupEventPublisher`).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dishka import AsyncContainer, Provider, Scope, make_async_container
from dishka.integrations.fastapi import FromDishka, inject, setup_dishka
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from mediator import (
    EventPublisher,
    EventRegistry,
    IEvent,
    IPublisher,
    Mediator,
    SequentialEventPublisher,
)


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


@dataclass
class Order:
    """The aggregate: it records what happened, and whoever saves it publishes that."""

    order_id: int
    customer: str
    sku: str
    quantity: int
    events: list[IEvent] = field(default_factory=list[IEvent])

    @classmethod
    def place(cls, order_id: int, customer: str, sku: str, quantity: int) -> "Order":
        order = cls(order_id, customer, sku, quantity)
        order.events.append(
            OrderPlaced(order_id=order_id, customer=customer, sku=sku, quantity=quantity)
        )
        return order

    def pull_events(self) -> list[IEvent]:
        events, self.events = self.events, []
        return events


@dataclass
class Warehouse:
    """What the service keeps between requests: stock, orders and the confirmations sent."""

    stock: dict[str, int]
    orders: dict[int, Order] = field(default_factory=dict[int, Order])
    confirmations: list[str] = field(default_factory=list[str])


class Session:
    """One request's changes to the warehouse, applied by `commit` or not at all."""

    def __init__(self, warehouse: Warehouse) -> None:
        self._warehouse = warehouse
        self._reserved: dict[str, int] = {}
        self._orders: list[Order] = []
        self._confirmations: list[str] = []

    def next_order_id(self) -> int:
        return len(self._warehouse.orders) + len(self._orders) + 1

    def add(self, order: Order) -> None:
        self._orders.append(order)

    def reserve(self, sku: str, quantity: int) -> None:
        left = self._warehouse.stock.get(sku, 0) - self._reserved.get(sku, 0)
        if quantity > left:
            raise OutOfStock(f"{quantity} of {sku} wanted, {left} left")
        self._reserved[sku] = self._reserved.get(sku, 0) + quantity

    def confirm(self, text: str) -> None:
        self._confirmations.append(text)

    def commit(self) -> None:
        for sku, quantity in self._reserved.items():
            self._warehouse.stock[sku] -= quantity
        self._warehouse.orders.update((order.order_id, order) for order in self._orders)
        self._warehouse.confirmations += self._confirmations


class ReserveStock:
    def __init__(self, session: Session) -> None:
        self._session = session

    async def handle(self, event: OrderPlaced) -> None:
        self._session.reserve(event.sku, event.quantity)


class ChargeCustomer:
    async def handle(self, event: OrderPlaced) -> None:
        if event.customer == "declined":
            raise PaymentDeclined(f"the card of {event.customer} was declined")


class SendConfirmation:
    def __init__(self, session: Session) -> None:
        self._session = session

    async def handle(self, event: OrderPlaced) -> None:
        self._session.confirm(f"order {event.order_id}: {event.quantity} of {event.sku}")


registry = (
    EventRegistry()
    .bind(OrderPlaced, [ReserveStock, ChargeCustomer, SendConfirmation])
    .freeze()
)


class Services(Provider):
    """What dishka builds: the warehouse once, and per request a session, the handlers and the
    mediator that resolves them from the request's own container."""

    def __init__(self, warehouse: Warehouse, publisher: EventPublisher) -> None:
        super().__init__()
        self._publisher = publisher
        self.provide(lambda: warehouse, provides=Warehouse, scope=Scope.APP)
        self.provide(Session, scope=Scope.REQUEST)
        self.provide_all(*registry.classes, scope=Scope.REQUEST)
        self.provide(self.events, scope=Scope.REQUEST)

    def events(self, container: AsyncContainer) -> IPublisher:
        return Mediator(registry, publisher=self._publisher, resolve=container.get)


class PlaceOrder(BaseModel):
    customer: str
    sku: str
    quantity: int


@inject
async def place_order(
    body: PlaceOrder, session: FromDishka[Session], events: FromDishka[IPublisher]
) -> dict[str, int]:
    order = Order.place(session.next_order_id(), body.customer, body.sku, body.quantity)
    session.add(order)
    for event in order.pull_events():
        await events.publish(event)  # the handlers run here, before the response
    session.commit()
    return {"order_id": order.order_id}


# Each failure a handler may raise, and the status that answers it.
STATUSES: dict[type[Exception], int] = {OutOfStock: 409, PaymentDeclined: 402}


async def failed(request: Request, error: Exception) -> JSONResponse:
    """One handler failed: its status. Several, as the group publisher reports them: a 500."""
    # Not isinstance: pyright would narrow `error` to a group of members of unknown types.
    grouped = issubclass(type(error), ExceptionGroup)
    failures: list[Exception] = list(getattr(error, "exceptions")) if grouped else [error]
    if len(failures) == 1:
        for kind in type(failures[0]).__mro__:
            if kind in STATUSES:
                return JSONResponse({"detail": str(failures[0])}, status_code=STATUSES[kind])
    return JSONResponse({"detail": [str(failure) for failure in failures]}, status_code=500)


def create_app(
    warehouse: Warehouse | None = None, publisher: EventPublisher = SequentialEventPublisher()
) -> FastAPI:
    app = FastAPI()
    app.post("/orders", status_code=201)(place_order)
    handler: Callable[[Request, Exception], Awaitable[JSONResponse]] = failed
    for kind in [*STATUSES, ExceptionGroup]:
        app.add_exception_handler(kind, handler)
    container = make_async_container(Services(warehouse or Warehouse({"mug": 3}), publisher))
    setup_dishka(container, app)
    return app
