"""Reading the YAML configuration files of the processors (alert rules, judge rubrics): the
file a user names, or the one shipped with Undertow."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from undertow.errors import UndertowError


def read_yaml(
    path: str | os.PathLike[str] | None,
    *,
    package: str,
    name: str,
    what: str,
    error: type[UndertowError],
) -> tuple[Any, str]:
    """The parsed YAML of ``path``, or of ``name`` shipped in ``package`` when ``path`` is None,
    and where it came from (for messages). Unreadable files raise ``error`` naming ``what``."""
    source = f"{package}/{name}" if path is None else os.fspath(path)
    try:
        if path is None:
            text = (resources.files(package) / name).read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        return yaml.safe_load(text), source
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"cannot read the {what} file {source}: {exc}") from exc
