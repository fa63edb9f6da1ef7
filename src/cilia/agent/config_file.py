"""The agent's configuration file, and where each setting came from.

The file is YAML: one mapping whose keys are the flags' names without dashes in front
(`pod-cidr: 10.1.0.0/16`, `clean-state: true`, `container-runtime: [containerd]`).
It is read only when given (`--config-file PATH` or CILIA_CONFIG_FILE): no default
path, so what an agent does never depends on a file nobody named. Precedence: flags >
CILIA_* environment > file > defaults.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError
from pydantic_settings import YamlConfigSettingsSource

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings
    from pydantic_settings.sources.types import Traversable

CONFIG_FILE_ENV = "CILIA_CONFIG_FILE"
NOT_IN_FILE = {"config_file"}
"""Fields a file cannot set."""


class ConfigFileError(ValueError):
    """A configuration file that cannot be used: missing, not YAML, or an unknown key."""


def file_key(field: str) -> str:
    """The key of a field in the file (and its flag without '--'): pod_cidr -> pod-cidr."""
    return field.replace("_", "-")


def config_file_path(flags: Mapping[str, Any], environ: Mapping[str, str]) -> Path | None:
    """The file to read: --config-file, else CILIA_CONFIG_FILE, else none."""
    raw = flags.get("config_file") or environ.get(CONFIG_FILE_ENV)
    return Path(raw).expanduser().absolute() if raw else None


def read_config_file(path: Path | Traversable, fields: Iterable[str]) -> dict[str, Any]:
    """The file's settings by field name; raises ConfigFileError naming the file and key."""
    known = set(fields) - NOT_IN_FILE
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path}: no such file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path}: expected a mapping of key: value")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(str(key), sorted(map(file_key, known)), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigFileError(f"config file {path}: unknown key {key!r}{hint}")
        if name in out:
            raise ConfigFileError(f"config file {path}: key {key!r} given twice")
        out[name] = value
    return out


class AgentFileSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, reading the flags' kebab-case keys strictly."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        if path is not None and not path.is_file():
            raise ConfigFileError(f"config file {path}: no such file")
        self.fields = set(settings_cls.model_fields)  # before the base class reads the file
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        return read_config_file(file_path, self.fields)


def value_sources(
    fields: Iterable[str],
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    path: Path | None,
    in_file: Iterable[str],
) -> dict[str, str]:
    """Field -> where its value came from: 'flag --X', 'env CILIA_X', 'file PATH', 'default'."""
    env_names = {name.upper(): name for name in environ}
    from_file = set(in_file)
    out: dict[str, str] = {}
    for field in fields:
        env = f"CILIA_{field.upper()}"
        if field in flags:
            out[field] = f"flag --{file_key(field)}"
        elif env in env_names:
            out[field] = f"env {env_names[env]}"
        elif field in from_file:
            out[field] = f"file {path}"
        else:
            out[field] = "default"
    return out


def explain(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """A validation error with each bad value's key and source (file, env, flag)."""
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        field = loc[0] if loc else ""
        where = file_key(".".join(loc)) if loc else "configuration"
        source = sources.get(field)
        origin = f" (from {source})" if source and source != "default" else ""
        lines.append(f"{where}: {err['msg']}{origin}")
    return "; ".join(lines)
