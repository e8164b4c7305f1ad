"""In-memory orders; knows nothing of gRPC."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from services.common.errors import InvalidArgument, NotFound


@dataclass(frozen=True)
class Order:
    id: str
    user_id: str
    item: str
    quantity: int


def validate_order(user_id: str, item: str, quantity: int) -> None:
    """Raise InvalidArgument unless these fields make an order (whether the user exists is not checked)."""
    if not user_id:
        raise InvalidArgument("user_id must not be empty")
    if not item.strip():
        raise InvalidArgument("item must not be empty")
    if quantity < 1:
        raise InvalidArgument("quantity must be at least 1")


class OrderStore:
    """Orders by id, listed in the order they were placed."""

    def __init__(self) -> None:
        self._orders: dict[str, Order] = {}
        self._ids = (f"order-{n}" for n in itertools.count(1))

    def create(self, user_id: str, item: str, quantity: int) -> Order:
        validate_order(user_id, item, quantity)
        order = Order(next(self._ids), user_id, item, quantity)
        self._orders[order.id] = order
        return order

    def get(self, order_id: str) -> Order:
        try:
            return self._orders[order_id]
        except KeyError:
            raise NotFound(f"order {order_id!r} not found") from None

    def list(self, user_id: str = "") -> list[Order]:
        return [order for order in self._orders.values() if not user_id or order.user_id == user_id]
