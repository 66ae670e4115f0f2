"""Alembic's entry point for the workbench's migrations. clem_icd.workbench.db configures it
(no alembic.ini): the engine comes in `config.attributes["engine"]`. SQLite alters tables by
copying them (render_as_batch), since it cannot drop or change most columns in place."""

from alembic import context

from clem_icd.workbench.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # the plain `alembic` command, for writing a new migration
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
