"""Where the spool is: SQLite (default) or PostgreSQL (docs/scale-out.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from gateway.config.types import (
    Duration,
    SecretHolder,
    parse_duration,
    resolve_secret,
)


class SpoolConfig(SecretHolder):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path | None = None  # sqlite; default: <state_dir>/spool.sqlite3
    # Group commit: a commit waits at most this long for more writers to join it.
    commit_window: Duration = parse_duration("0s")
    max_batch: int = Field(256, ge=1)
    # postgres (docs/scale-out.md). The DSN (postgresql://user:password@host:port/database) is a secret.
    dsn_env: str | None = None
    dsn_file: Path | None = None
    db_schema: str = Field("mailgw", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,39}$")
    instance: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")  # default: the host name
    lease: Duration = Field(parse_duration("30s"), ge=1.0)
    pool_size: int = Field(10, ge=2, le=200)
    connect_timeout: Duration = Field(parse_duration("5s"), gt=0)
    statement_timeout: Duration = Field(parse_duration("30s"), gt=0)

    @model_validator(mode="after")
    def _backend_keys(self) -> SpoolConfig:
        if self.backend == "postgres":
            if not (self.dsn_env or self.dsn_file):
                raise ValueError("backend postgres needs dsn_env or dsn_file (the database URL is a secret)")
            if self.path is not None:
                raise ValueError("path is for the sqlite backend; postgres is reached through dsn_env/dsn_file")
        elif self.dsn_env or self.dsn_file:
            raise ValueError("dsn_env/dsn_file are for backend: postgres")
        return self

    def dsn(self) -> str:
        return resolve_secret(self.dsn_env, self.dsn_file, what="spool.dsn")
