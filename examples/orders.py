"""Orders: two handlers and a payment that can fail, under both publishers.

Run it from the repository's root, with nothing installed: python -m examples.orders
"""

import asyncio
from dataclasses import dataclass

from mediator import (
    EventHandler,
    EventRegistry,
    GroupEventPublisher,
    IEvent,
    Mediator,
    SequentialEventPublisher,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPlaced(IEvent):
    order_id: int
    email: str
    card: str


class CardDeclined(Exception):
    pass


class ChargeCard(EventHandler[OrderPlaced]):
    async def handle(self, event: OrderPlaced) -> None:
        await asyncio.sleep(0.01)
        if event.card.startswith("0000"):
            raise CardDeclined(f"card {event.card} declined for order {event.order_id}")
        print(f"  charged the card of order {event.order_id}")


class SendReceipt(EventHandler[OrderPlaced]):
    async def handle(self, event: OrderPlaced) -> None:
        await asyncio.sleep(0.01)
        print(f"  sent the receipt of order {event.order_id} to {event.email}")


class ReserveStock:
    """A handler need not inherit anything: an async `handle` is enough."""

    async def handle(self, placed: OrderPlaced) -> None:
        await asyncio.sleep(0.01)
        print(f"  reserved the stock of order {placed.order_id}")


async def main() -> None:
    registry = EventRegistry().bind(OrderPlaced, [ChargeCard, SendReceipt, ReserveStock]).freeze()
    good = OrderPlaced(order_id=1, email="ada@example.com", card="4242 4242")
    declined = OrderPlaced(order_id=2, email="alan@example.com", card="0000 0000")

    print("Sequential publisher (the default): one handler after another, in order.")
    sequential = Mediator(registry)
    await sequential.publish(good)
    try:
        await sequential.publish(declined)
    except CardDeclined as error:
        print(f"  order 2 failed: {error}; no receipt was sent and no stock reserved")

    print("Group publisher: the handlers run concurrently; failures come as an ExceptionGroup.")
    concurrent = Mediator(registry, publisher=GroupEventPublisher(fail_fast=False))
    await concurrent.publish(good)
    try:
        await concurrent.publish(declined)
    except* CardDeclined as group:
        print(f"  order 2: {group.message}: {group.exceptions[0]}")

    print("Sequential, fail_fast=False: every handler runs, then the failures are raised.")
    collecting = Mediator(registry, publisher=SequentialEventPublisher(fail_fast=False))
    try:
        await collecting.publish(declined)
    except ExceptionGroup as group:
        print(f"  order 2: {group.message}")


if __name__ == "__main__":
    asyncio.run(main())
