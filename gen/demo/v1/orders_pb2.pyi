from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrdersServedBy(_message.Message):
    __slots__ = ("service", "version", "instance")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: str
    instance: str
    def __init__(self, service: _Optional[str] = ..., version: _Optional[str] = ..., instance: _Optional[str] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("id", "user_id", "item", "quantity")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    item: str
    quantity: int
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., item: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class CreateOrderRequest(_message.Message):
    __slots__ = ("user_id", "item", "quantity")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item: str
    quantity: int
    def __init__(self, user_id: _Optional[str] = ..., item: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class CreateOrderResponse(_message.Message):
    __slots__ = ("order", "served_by", "user_checked_by")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    USER_CHECKED_BY_FIELD_NUMBER: _ClassVar[int]
    order: Order
    served_by: OrdersServedBy
    user_checked_by: OrdersServedBy
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., served_by: _Optional[_Union[OrdersServedBy, _Mapping]] = ..., user_checked_by: _Optional[_Union[OrdersServedBy, _Mapping]] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order", "served_by")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    order: Order
    served_by: OrdersServedBy
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., served_by: _Optional[_Union[OrdersServedBy, _Mapping]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders", "served_by")
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    served_by: OrdersServedBy
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ..., served_by: _Optional[_Union[OrdersServedBy, _Mapping]] = ...) -> None: ...
