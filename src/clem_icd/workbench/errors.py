"""The workbench's refusals, each with the HTTP status the API answers it with. They are
ClemErrors too: the CLI prints their one line."""

from __future__ import annotations

from clem_icd.errors import ClemError


class WorkError(ClemError):
    status = 400


class NotFound(WorkError):
    status = 404


class Forbidden(WorkError):
    status = 403


class Conflict(WorkError):
    """The work's state does not allow this (claimed by another, already submitted, a name taken)."""

    status = 409


class Stale(WorkError):
    """If-Match names an older version than the note's."""

    status = 412


class Invalid(WorkError):
    status = 422
