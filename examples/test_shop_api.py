"""The FastAPI service, through httpx: the same statuses under either publisher."""

import asyncio
from typing import Any

import httpx
import pytest

from examples.shop_api import Warehouse, create_app
from mediator import EventPublisher, GroupEventPublisher, SequentialEventPublisher

publishers = pytest.mark.parametrize(
    "publisher",
    [SequentialEventPublisher(), GroupEventPublisher(), GroupEventPublisher(fail_fast=False)],
    ids=["sequential", "group", "group-collecting"],
)


def post(warehouse: Warehouse, publisher: EventPublisher, *orders: dict[str, Any]) -> list[httpx.Response]:
    """POST each order to a new app over `warehouse`, in turn, and return the responses."""

    async def client() -> list[httpx.Response]:
        app = create_app(warehouse, publisher)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as shop:
            return [await shop.post("/orders", json=order) for order in orders]

    return asyncio.run(client())


@publishers
def test_placing_an_order_runs_its_handlers_before_the_response(publisher: EventPublisher) -> None:
    warehouse = Warehouse({"mug": 3})
    [response] = post(warehouse, publisher, {"customer": "ada", "sku": "mug", "quantity": 2})
    assert (response.status_code, response.json()) == (201, {"order_id": 1})
    assert warehouse.stock == {"mug": 1}
    assert warehouse.confirmations == ["order 1: 2 of mug"]


@publishers
def test_a_handler_out_of_stock_is_a_409_under_either_publisher(publisher: EventPublisher) -> None:
    warehouse = Warehouse({"mug": 3})
    [response] = post(warehouse, publisher, {"customer": "ada", "sku": "mug", "quantity": 5})
    assert (response.status_code, response.json()) == (409, {"detail": "5 of mug wanted, 3 left"})
    assert warehouse == Warehouse({"mug": 3}), "nothing of a failed request is kept"


@publishers
def test_a_declined_payment_is_a_402_under_either_publisher(publisher: EventPublisher) -> None:
    warehouse = Warehouse({"mug": 3})
    [response] = post(warehouse, publisher, {"customer": "declined", "sku": "mug", "quantity": 1})
    assert response.status_code == 402
    assert warehouse == Warehouse({"mug": 3})


def test_two_failures_at_once_are_a_500_that_names_both() -> None:
    warehouse = Warehouse({"mug": 3})
    order = {"customer": "declined", "sku": "mug", "quantity": 5}
    [response] = post(warehouse, GroupEventPublisher(fail_fast=False), order)
    assert response.status_code == 500
    assert sorted(response.json()["detail"]) == [
        "5 of mug wanted, 3 left",
        "the card of declined was declined",
    ]


@publishers
def test_each_request_has_its_own_session_which_its_handlers_share(
    publisher: EventPublisher,
) -> None:
    warehouse = Warehouse({"mug": 3})
    responses = post(
        warehouse,
        publisher,
        {"customer": "ada", "sku": "mug", "quantity": 2},
        {"customer": "alan", "sku": "mug", "quantity": 2},
        {"customer": "grace", "sku": "mug", "quantity": 1},
    )
    assert [response.status_code for response in responses] == [201, 409, 201]
    assert warehouse.stock == {"mug": 0}
    assert warehouse.confirmations == ["order 1: 2 of mug", "order 2: 1 of mug"]
