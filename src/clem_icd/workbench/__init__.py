"""The coding workbench: notes queued for coding, the model's suggestions, coders' decisions,
users with roles and an append-only audit log, kept in a database (SQLite by default,
PostgreSQL in production) whose schema Alembic migrations own.

- db: engines and sessions (SQLite pragmas, immediate write transactions), schema revision checks.
- models: the tables.
- users: tokens and roles.
- store: everything the API and the CLI do to the work, one transaction per call.
- precoder: the background worker that codes queued notes through the service's batcher.
- routes: the HTTP API under /v1/work.
"""
