"""Building blocks of connector settings models: ``${NAME}`` indirection for secrets and endpoints.

A source declaration (``sources.yaml``) should not hold a database password or an access key.
Fields typed :data:`EnvSecret` or :data:`EnvStr` may instead say ``${NAME}``, replaced by the
variable ``NAME`` of the environment *the caller passes* as validation context
(``model_validate(data, context={"environ": os.environ})``); nothing here reads the process
environment itself. Only these fields are expanded, so a SQL template may still contain ``$``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationInfo

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_environment(value: Any, info: ValidationInfo) -> Any:
    """Replace each ``${NAME}`` in a string by ``environ[NAME]`` when the context carries an environ."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    environ: Mapping[str, str] | None = (info.context or {}).get("environ")
    if environ is None:
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            # the message names the variable, never a value
            raise ValueError(f"environment variable {name} is not set")
        return environ[name]

    return _REFERENCE.sub(substitute, value)


EnvSecret = Annotated[SecretStr, BeforeValidator(expand_environment)]
EnvStr = Annotated[str, BeforeValidator(expand_environment)]


class ConnectorSettings(BaseModel):
    """Base of each connector's settings: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
