"""Entry-point plugins: third-party connectors and generators, loaded only when allow-listed.

Like vLLM's plugins, an installed package does not get to run code in Enclave merely by being
installed: a plugin registered under ``enclave.connectors`` or ``enclave.generators`` loads only
when its name is listed in ``ENCLAVE_PLUGINS`` (comma-separated). Built-ins need no listing. The
distribution that provided what loaded is reported (:func:`distribution_of`), and the audit log
names it for every answer.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions, version
from typing import Any

from connectors.base import Connector, register, registered_kinds
from connectors.base import connector_for as base_connector_for
from rag.errors import ConfigurationError

CONNECTORS = "enclave.connectors"
GENERATORS = "enclave.generators"


@dataclass(frozen=True)
class Plugin:
    """What an entry point loaded, and the distribution (``name version``) that registered it."""

    group: str
    name: str
    distribution: str
    value: Any


def load_plugin(group: str, name: str, allowed: Collection[str]) -> Plugin | None:
    """The plugin registered as ``name`` in ``group``; None when no installed distribution registers one.

    A registered but unlisted plugin is refused before its module is imported.
    """
    for entry_point in entry_points(group=group, name=name):
        dist = entry_point.dist
        distribution = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
        if name not in allowed:
            raise ConfigurationError(
                f"{group} plugin {name!r} from {distribution} is installed but not allowed; "
                f"add {name!r} to ENCLAVE_PLUGINS to load it")
        return Plugin(group, name, distribution, entry_point.load())
    return None


# Enclave's own top-level packages and the distribution that ships them: named directly, because
# scanning every installed distribution's metadata (packages_distributions) took 0.4-1.5 s of the
# query service's start-up, to name the built-in generator.
_OWN_PACKAGES = frozenset({"rag", "connectors", "pipelines"})
OWN_DISTRIBUTION = "enclave-rag"


def distribution_of(obj: object) -> str:
    """``name version`` of the installed distribution that provides ``obj`` (a function, class or instance)."""
    module = str(getattr(obj, "__module__", None) or type(obj).__module__)
    top = module.partition(".")[0]
    if top in _OWN_PACKAGES:
        try:
            return f"{OWN_DISTRIBUTION} {version(OWN_DISTRIBUTION)}"
        except PackageNotFoundError:
            pass
    for dist in packages_distributions().get(top, []):
        return f"{dist} {version(dist)}"
    if top in sys.stdlib_module_names:
        return f"python {sys.version.split()[0]}"
    return f"module {module} (no installed distribution)"


def connector_for(kind: str, allowed: Collection[str], **options: Any) -> Connector:
    """A connector by kind: a built-in, or a plugin under ``enclave.connectors`` listed in ``allowed``."""
    if kind not in registered_kinds():
        plugin = load_plugin(CONNECTORS, kind, allowed)
        if plugin is None:
            known = ", ".join(sorted(registered_kinds())) or "none"
            raise ConfigurationError(f"no connector of kind {kind!r} (built-in: {known}; others register under "
                                     f"{CONNECTORS!r} and are listed in ENCLAVE_PLUGINS)")
        register(kind)(plugin.value)
    return base_connector_for(kind, **options)
