"""Users, their roles and their bearer tokens.

A token is 32 random bytes (url-safe base64), shown once when the user is made; the database
keeps its SHA-256. A slow password hash (bcrypt, argon2) protects guessable passwords: a random
256-bit token cannot be guessed, and a plain digest lets a request's token be found by an index
lookup rather than by trying every user's hash.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from clem_icd.workbench.errors import Conflict, Invalid, NotFound
from clem_icd.workbench.models import ROLES, User, audit

# What each role may do; an admin may do everything.
CODING, AUDITING, ADMINISTERING = "code", "audit", "administer"
PERMISSIONS = {"coder": {CODING}, "auditor": {AUDITING}, "admin": {CODING, AUDITING, ADMINISTERING}}


@dataclass(frozen=True)
class Actor:
    """Who makes a request."""

    id: int
    name: str
    role: str

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 100 or any(c.isspace() for c in name):
        raise Invalid("user name: 1 to 100 characters without spaces")
    return name


def add_user(db, name: str, role: str) -> str:
    """Make a user; returns the token (the only time it exists outside the client)."""
    name = check_name(name)
    if role not in ROLES:
        raise Invalid(f"--role must be one of {', '.join(ROLES)}, got '{role}'")
    token = secrets.token_urlsafe(32)
    with db.write() as session:
        if session.scalar(select(User.id).where(User.name == name)) is not None:
            raise Conflict(f"user {name} exists already")
        user = User(name=name, role=role, token_hash=token_hash(token), disabled=False)
        session.add(user)
        session.flush()
        audit(session, None, "user added", None, {"user": name, "role": role})
    return token


def list_users(db) -> list[dict]:
    with db.read() as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        return [{"name": u.name, "role": u.role, "disabled": u.disabled,
                 "created_at": u.created_at.isoformat(timespec="seconds")} for u in users]


def disable_user(db, name: str) -> None:
    with db.write() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise NotFound(f"no user named {name}")
        user.disabled = True
        audit(session, None, "user disabled", None, {"user": name})


def authenticate(db, token: str) -> Actor | None:
    """The enabled user whose token this is, or None."""
    with db.read() as session:
        user = session.scalar(select(User).where(User.token_hash == token_hash(token)))
        if user is None or user.disabled:
            return None
        return Actor(user.id, user.name, user.role)
