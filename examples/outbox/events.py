"""The events that the order service tells the billing service about, and their wire form."""

import uuid
from collections.abc import Mapping
from typing import ClassVar, Literal

import pydantic


class NotificationEvent(pydantic.BaseModel):
    """An event that other services hear about: it has an id, and it travels as JSON.

    A pydantic model cannot inherit `IEvent`; declaring its marker makes it an event.
    """

    model_config = pydantic.ConfigDict(frozen=True)
    __mediator_event__: ClassVar[Literal[True]] = True

    event_id: str = pydantic.Field(default_factory=lambda: uuid.uuid4().hex)


class OrderPlaced(NotificationEvent):
    order_id: int
    customer: str
    total_cents: int
    placed_at: float  # time.time() in the transaction that placed the order


KINDS: dict[str, type[NotificationEvent]] = {kind.__name__: kind for kind in [OrderPlaced]}


def to_fields(event: NotificationEvent) -> dict[str, str]:
    """The fields of the stream entry that carries `event`."""
    return {"event_id": event.event_id, "type": type(event).__name__, "body": event.model_dump_json()}


def from_fields(fields: Mapping[bytes, bytes]) -> NotificationEvent:
    """The event that a stream entry carries, as redis-py returns the entry's fields."""
    kind = KINDS[fields[b"type"].decode()]
    return kind.model_validate_json(fields[b"body"])
