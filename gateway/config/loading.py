"""Reading config.yaml: YAML -> validated `Config`, errors by YAML path, relative paths anchored at the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gateway.config.root import Config
from gateway.config.types import (
    ConfigError,
)


def _yaml_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "json-or-python", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError) -> list[str]:
    return [f"{_yaml_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()]


def _anchored(value: Any, base: Path) -> Any:
    """`value` with every relative path in it made absolute against `base` (None when nothing changed)."""
    if isinstance(value, Path):
        return None if value.is_absolute() else base / value
    if isinstance(value, str):
        # Socket binds are strings ("unix:PATH" beside "host:port"); only the unix: form holds a path.
        path = value[5:] if value.startswith("unix:") else None
        return None if path is None or path.startswith("/") else f"unix:{base / path}"
    if isinstance(value, BaseModel):
        changes = {}
        for name in type(value).model_fields:
            new = _anchored(getattr(value, name), base)
            if new is not None:
                changes[name] = new
        return value.model_copy(update=changes) if changes else None
    if isinstance(value, list | tuple):
        items = [_anchored(v, base) for v in value]
        if all(v is None for v in items):
            return None
        return type(value)(old if new is None else new for old, new in zip(value, items, strict=True))
    return None


def anchor_paths(cfg: Config, base_dir: Path) -> Config:
    """Every relative path of the config (state_dir, spool path, key, secret and users files, unix socket binds,
    whatever field holds a path) resolved against `base_dir`: the directory of the config file, for every command.
    `mailgw pipe` runs from Postfix's queue directory and `serve` from systemd's working directory; with paths
    taken from the current directory they would each find a different spool."""
    anchored = _anchored(cfg, base_dir)
    return cfg if anchored is None else anchored


def parse_config(data: Any, *, base_dir: Path | None = None) -> Config:
    """Validate a config mapping; with `base_dir` relative paths are resolved against it (see `anchor_paths`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the config must be a mapping"])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    return cfg if base_dir is None else anchor_paths(cfg, base_dir)


def load_config(path: str | Path) -> Config:
    """Load and validate; relative paths in it are taken from the directory of the config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(data, base_dir=Path(os.path.abspath(path)).parent)
