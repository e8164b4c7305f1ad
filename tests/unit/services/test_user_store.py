"""UserStore on its own: validation, id assignment, all-or-nothing import."""

from __future__ import annotations

import pytest

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.users.store import User, UserStore


def test_create_assigns_ids_that_skip_taken_ones() -> None:
    store = UserStore()
    store.create("Ada", user_id="user-2")
    assert store.create("Grace").id == "user-1"
    assert store.create("Linus").id == "user-3"


def test_create_rejects_duplicate_id_and_blank_name() -> None:
    store = UserStore()
    store.create("Ada", user_id="ada")
    with pytest.raises(AlreadyExists, match="'ada' already exists"):
        store.create("Other", user_id="ada")
    with pytest.raises(InvalidArgument, match="name"):
        store.create("   ")
    assert store.list() == [User("ada", "Ada")]


def test_update_changes_only_given_fields() -> None:
    store = UserStore()
    store.create("Ada", "ada@old.example", user_id="ada")
    assert store.update("ada", email="ada@new.example") == User("ada", "Ada", "ada@new.example")
    assert store.update("ada", name="Ada L.") == User("ada", "Ada L.", "ada@new.example")
    with pytest.raises(InvalidArgument):
        store.update("ada", name="")
    assert store.get("ada").name == "Ada L."


def test_missing_users_raise_not_found() -> None:
    store = UserStore()
    for action in (lambda: store.get("x"), lambda: store.update("x", name="X"), lambda: store.delete("x")):
        with pytest.raises(NotFound, match="'x' not found"):
            action()


def test_list_keeps_creation_order_and_limit() -> None:
    store = UserStore()
    for name in ("c", "a", "b"):
        store.create(name, user_id=name)
    store.put(User("a", "A again"))
    assert [u.id for u in store.list()] == ["c", "a", "b"]
    assert [u.id for u in store.list(limit=2)] == ["c", "a"]


def test_put_reports_whether_user_is_new() -> None:
    store = UserStore()
    user, created = store.put(User("", "Ada"))
    assert created and user.id == "user-1"
    assert store.put(User("user-1", "Ada 2")) == (User("user-1", "Ada 2"), False)


def test_put_all_stores_nothing_when_one_user_is_invalid() -> None:
    store = UserStore()
    with pytest.raises(InvalidArgument):
        store.put_all([User("a", "A"), User("b", ""), User("c", "C")])
    assert store.list() == []
    assert store.put_all([User("a", "A"), User("", "B")]) == 2
    assert [u.id for u in store.list()] == ["a", "user-1"]
