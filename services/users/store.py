"""In-memory user records; knows nothing of gRPC."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace

from services.common.errors import AlreadyExists, InvalidArgument, NotFound


@dataclass(frozen=True)
class User:
    id: str
    name: str
    email: str = ""


class UserStore:
    """Users by id, listed in the order they were first stored."""

    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        self._ids = (f"user-{n}" for n in itertools.count(1))

    def get(self, user_id: str) -> User:
        try:
            return self._users[user_id]
        except KeyError:
            raise NotFound(f"user {user_id!r} not found") from None

    def create(self, name: str, email: str = "", user_id: str = "") -> User:
        if user_id in self._users:
            raise AlreadyExists(f"user {user_id!r} already exists")
        user = self._checked(User(user_id, name, email))
        self._users[user.id] = user
        return user

    def update(self, user_id: str, *, name: str | None = None, email: str | None = None) -> User:
        current = self.get(user_id)
        changes = {k: v for k, v in (("name", name), ("email", email)) if v is not None}
        user = self._checked(replace(current, **changes))
        self._users[user_id] = user
        return user

    def delete(self, user_id: str) -> None:
        if self._users.pop(user_id, None) is None:
            raise NotFound(f"user {user_id!r} not found")

    def list(self, limit: int = 0) -> list[User]:
        users = list(self._users.values())
        return users[:limit] if limit > 0 else users

    def put(self, user: User) -> tuple[User, bool]:
        """Insert or replace one user; returns it as stored and whether it is new."""
        user = self._checked(user)
        created = user.id not in self._users
        self._users[user.id] = user
        return user, created

    def put_all(self, users: Iterable[User]) -> int:
        """Insert or replace every user, or none of them if any is invalid; returns how many."""
        checked = [self._checked(user) for user in users]
        for user in checked:
            self._users[user.id] = user
        return len(checked)

    def _checked(self, user: User) -> User:
        """The user, validated, with a fresh id if it had none."""
        if not user.name.strip():
            raise InvalidArgument("user name must not be empty")
        if not user.id:
            user = replace(user, id=self._fresh_id())
        return user

    def _fresh_id(self) -> str:
        return next(user_id for user_id in self._ids if user_id not in self._users)
