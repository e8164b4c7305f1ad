"""demo.v1.Orders over an OrderStore, checking each new order's user with the users service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from demo.v1 import orders_pb2, orders_pb2_grpc

from services.common.errors import reported_as_status
from services.common.identity import Instance
from services.orders.store import Order, OrderStore, validate_order
from services.orders.users_client import UsersClient

SERVICE_NAME: str = orders_pb2.DESCRIPTOR.services_by_name["Orders"].full_name


def to_message(order: Order) -> Any:
    return orders_pb2.Order(id=order.id, user_id=order.user_id, item=order.item, quantity=order.quantity)


def served_by(instance: Instance) -> Any:
    return orders_pb2.OrdersServedBy(
        service=instance.service, version=instance.version, instance=instance.instance
    )


class OrdersServicer:
    """Implements every demo.v1.Orders method; registered with add_OrdersServicer_to_server."""

    def __init__(self, store: OrderStore, users: UsersClient, instance: Instance) -> None:
        self._store = store
        self._users = users
        self._metadata = instance.metadata
        self._served_by = served_by(instance)

    async def CreateOrder(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(self._metadata)
        async with reported_as_status(context):
            # Bad input fails here, before it costs a call to the users service.
            validate_order(request.user_id, request.item, request.quantity)
            checked_by = await self._users.check_user(request.user_id, context)
            order = self._store.create(request.user_id, request.item, request.quantity)
        return orders_pb2.CreateOrderResponse(
            order=to_message(order), served_by=self._served_by, user_checked_by=served_by(checked_by)
        )

    async def GetOrder(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(self._metadata)
        async with reported_as_status(context):
            order = self._store.get(request.id)
        return orders_pb2.GetOrderResponse(order=to_message(order), served_by=self._served_by)

    async def ListOrders(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(self._metadata)
        orders = [to_message(order) for order in self._store.list(request.user_id)]
        return orders_pb2.ListOrdersResponse(orders=orders, served_by=self._served_by)


def register(server: Any, store: OrderStore, users: UsersClient, instance: Instance) -> Sequence[str]:
    """Add the Orders service to a grpc.aio server; returns the gRPC service names it serves."""
    orders_pb2_grpc.add_OrdersServicer_to_server(OrdersServicer(store, users, instance), server)
    return [SERVICE_NAME]
