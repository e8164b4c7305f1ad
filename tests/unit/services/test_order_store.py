"""OrderStore on its own: validation, ids, filtering."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.orders.store import Order, OrderStore


def test_create_get_and_list_by_user() -> None:
    store = OrderStore()
    first = store.create("ada", "book", 2)
    store.create("grace", "lamp", 1)
    third = store.create("ada", "pen", 5)
    assert first == Order("order-1", "ada", "book", 2)
    assert store.get("order-3") == third
    assert store.list("ada") == [first, third]
    assert [o.id for o in store.list()] == ["order-1", "order-2", "order-3"]


@pytest.mark.parametrize(
    ("user_id", "item", "quantity", "message"),
    [("", "book", 1, "user_id"), ("ada", " ", 1, "item"), ("ada", "book", 0, "quantity")],
)
def test_invalid_orders_are_rejected(user_id: str, item: str, quantity: int, message: str) -> None:
    store = OrderStore()
    with pytest.raises(InvalidArgument, match=message):
        store.create(user_id, item, quantity)
    assert store.list() == []


def test_unknown_order_is_not_found() -> None:
    with pytest.raises(NotFound, match="'order-9' not found"):
        OrderStore().get("order-9")
