"""The plugin manager: one lazily created :class:`pluggy.PluginManager` for the ``possm_plugin`` project.

Every module named in the ``possm_plugin`` entry-point group is loaded once, the first time anything
asks for a backbone, source, sink or decoder node; first-party plugins (the three backbones, the
LSL/Redis/BrainFlow adapters, the POSSM decoder node) are loaded exactly as third-party ones are.

- Each entry point is loaded on its own (pluggy's ``load_setuptools_entrypoints(group, name=...)``),
  so a plugin that fails to import, whose hook implementations do not match the specs, or whose hook
  raises while registering is logged with its name, kept in :func:`list_failures` (which
  ``possm plugins`` shows) and skipped; the others keep working.
- ``POSSM_PLUGINS`` restricts what loads: unset or empty loads everything; ``none`` loads nothing;
  ``builtin`` loads this distribution's own entry points; otherwise a comma-separated list of
  entry-point names or distribution names (``builtin`` may be one of them), e.g.
  ``POSSM_PLUGINS=builtin,my_ext``.
- Two plugins registering the same name for the same hook is a :class:`PluginError` naming both.

Tests call :func:`reset_plugin_manager` to get a fresh manager (and re-read ``POSSM_PLUGINS``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pluggy

from possm_plugin.errors import PluginError, PossmError
from possm_plugin.plugins import hookspecs
from possm_plugin.plugins.markers import ENTRY_POINT_GROUP, PROJECT

__all__ = [
    "ENV_VAR",
    "HOOKS",
    "PluginEntry",
    "PluginFailure",
    "PluginRow",
    "get_backbones",
    "get_decoder_node",
    "get_decoder_nodes",
    "get_plugin_manager",
    "get_sink",
    "get_sinks",
    "get_source",
    "get_sources",
    "list_entries",
    "list_failures",
    "list_plugins",
    "list_skipped",
    "load_backbones",
    "reset_plugin_manager",
]

log = logging.getLogger("possm_plugin.plugins")

ENV_VAR = "POSSM_PLUGINS"
#: the distribution whose entry points ``POSSM_PLUGINS=builtin`` selects
BUILTIN_DISTRIBUTION = "possm-plugin"

#: kind -> hook name; the kind is what rows, errors and ``possm plugins`` call it
HOOKS = {
    "backbones": "possm_register_backbones",
    "sources": "possm_register_sources",
    "sinks": "possm_register_sinks",
    "decoder_nodes": "possm_register_decoder_nodes",
}
_SINGULAR = {"backbones": "backbone", "sources": "source", "sinks": "sink", "decoder_nodes": "decoder node"}


@dataclass(frozen=True)
class PluginEntry:
    """One thing a plugin registered.

    Attributes:
        kind: ``backbones``, ``sources``, ``sinks`` or ``decoder_nodes``.
        name: the name users pass (``--source NAME``, ``backbone: NAME``).
        factory: what ``register`` was given (a class or a function).
        description: one line for ``possm plugins``.
        plugin: the name of the plugin that registered it (its entry-point name).
        distribution, version: the installed distribution providing the plugin (None if unknown).
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    distribution: str | None
    version: str | None


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    plugin: str
    target: str
    distribution: str | None
    version: str | None
    error: str


class PluginRow(NamedTuple):
    """One hook implementation's registration, as ``possm plugins`` lists it (name None: the
    implementation registered nothing)."""

    hook: str
    name: str | None
    plugin: str
    distribution: str | None
    version: str | None


class _Collected(NamedTuple):
    entries: dict[str, PluginEntry]
    rows: list[PluginRow]
    clashes: list[str]


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_building: pluggy.PluginManager | None = None
_failures: list[PluginFailure] = []
_skipped: list[PluginFailure] = []
_collected: dict[str, _Collected] = {}


# -- the manager ------------------------------------------------------------------------------
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _pm, _building
    if _pm is not None:
        return _pm
    with _lock:
        if _pm is not None:
            return _pm
        if _building is not None:  # a plugin asked for the manager while being loaded
            return _building
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(hookspecs)
        _building = pm
        try:
            _load_entry_points(pm)
            _check_pending(pm)
        finally:
            _building = None
        _pm = pm
        return pm


def reset_plugin_manager() -> None:
    """Forget the manager, its failures and everything collected (for tests); the next call loads
    plugins afresh and re-reads ``POSSM_PLUGINS``. Backbones already registered in
    :mod:`possm_plugin.model.backbones` stay registered."""
    global _pm
    with _lock:
        _pm = None
        _failures.clear()
        _skipped.clear()
        _collected.clear()


def _restriction() -> set[str] | None:
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return None
    return {tok.strip().lower() for tok in raw.split(",") if tok.strip()}


def _allowed(ep: importlib.metadata.EntryPoint, dist_name: str | None, allow: set[str] | None) -> bool:
    if allow is None:
        return True
    if "none" in allow:
        return False
    dist = (dist_name or "").lower()
    if "builtin" in allow and dist == BUILTIN_DISTRIBUTION:
        return True
    return bool(ep.name.lower() in allow or (dist and {dist, dist.replace("-", "_")} & allow))


def _dist_of_ep(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allow = _restriction()
    seen: set[str] = set()
    names = {"none", "builtin"}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist, version = _dist_of_ep(ep)
        names |= {ep.name.lower(), (dist or "").lower(), (dist or "").lower().replace("-", "_")}
        if ep.name in seen:  # pluggy loads only the first of two entry points with the same name
            _fail(ep.name, ep.value, dist, version, PluginError("another installed distribution already provides a plugin with this name"))
            continue
        seen.add(ep.name)
        if not _allowed(ep, dist, allow):
            _skipped.append(PluginFailure(ep.name, ep.value, dist, version, f"not loaded: {ENV_VAR}={os.environ.get(ENV_VAR)!r}"))
            continue
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
        except Exception as exc:  # any error in a plugin's import or registration: report and skip it
            _fail(ep.name, ep.value, dist, version, exc)
    if allow and allow - names:
        log.warning("%s names %s, which no installed plugin or distribution provides", ENV_VAR, sorted(allow - names))


def _fail(plugin: str, target: str, dist: str | None, version: str | None, exc: BaseException) -> None:
    msg = f"{type(exc).__name__}: {exc}"
    _failures.append(PluginFailure(plugin, target, dist, version, msg))
    log.warning("plugin %r (%s%s) skipped: %s", plugin, target, f", from {dist} {version}" if dist else "", msg)


def _distinfo(pm: pluggy.PluginManager, plugin: object) -> tuple[str | None, str | None]:
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return dist.project_name, dist.version
    return None, None


def _check_pending(pm: pluggy.PluginManager) -> None:
    """``check_pending()``, unregistering (and reporting) each plugin with an unknown hook."""
    for _ in range(len(pm.get_plugins()) + 1):
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            plugin = exc.plugin
            name = pm.get_name(plugin) or repr(plugin)
            dist, version = _distinfo(pm, plugin)
            pm.unregister(plugin)
            _fail(name, getattr(plugin, "__name__", repr(plugin)), dist, version, exc)


# -- collecting registrations -------------------------------------------------------------------
def _collect(kind: str) -> _Collected:
    """Call ``kind``'s hook once per plugin (pluggy's ``subset_hook_caller``), so each registration
    is attributed to its plugin and a plugin that raises is skipped alone."""
    pm = get_plugin_manager()
    with _lock:
        if kind in _collected:
            return _collected[kind]
        hook_name = HOOKS[kind]
        hook = getattr(pm.hook, hook_name)
        entries: dict[str, PluginEntry] = {}
        rows: list[PluginRow] = []
        clashes: list[str] = []
        plugins = pm.get_plugins()
        for impl in hook.get_hookimpls():  # registration order (pluggy calls them last-first)
            plugin_name = impl.plugin_name
            dist, version = _distinfo(pm, impl.plugin)
            mine: list[PluginEntry] = []

            def register(name: str, factory: Callable[..., Any], *, description: str = "", _mine=mine, _p=plugin_name, _d=dist, _v=version) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_p!r} registered a {_SINGULAR[kind]} with name {name!r}; names are non-empty strings")
                if not callable(factory):
                    raise PluginError(f"plugin {_p!r} registered {_SINGULAR[kind]} {name!r} with factory {factory!r}, which is not callable")
                _mine.append(PluginEntry(kind, name, factory, str(description or _doc_line(factory)), _p, _d, _v))

            caller = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in plugins if p is not impl.plugin])
            try:
                caller(register=register)
            except Exception as exc:  # a plugin's hook raised: skip this plugin's registrations
                _fail(plugin_name, hook_name, dist, version, exc)
                continue
            if not mine:
                rows.append(PluginRow(kind, None, plugin_name, dist, version))
            for e in mine:
                prev = entries.get(e.name)
                if prev is not None:
                    if prev.plugin == e.plugin and prev.factory is e.factory:
                        continue
                    clashes.append(
                        f"{_SINGULAR[kind]} {e.name!r} is registered by plugin {prev.plugin!r} ({prev.distribution}) "
                        f"and by plugin {e.plugin!r} ({e.distribution}); uninstall one, or restrict loading with {ENV_VAR}"
                    )
                    continue
                entries[e.name] = e
                rows.append(PluginRow(kind, e.name, e.plugin, e.distribution, e.version))
        result = _Collected(dict(sorted(entries.items())), rows, clashes)
        _collected[kind] = result
        return result


def _doc_line(obj: object) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _entries(kind: str) -> dict[str, PluginEntry]:
    c = _collect(kind)
    if c.clashes:
        raise PluginError("; ".join(c.clashes))
    return dict(c.entries)


def _get(kind: str, name: str) -> Callable[..., Any]:
    entries = _entries(kind)
    try:
        return entries[name].factory
    except KeyError:
        failed = [f.plugin for f in _failures]
        hint = f"; plugins that failed to load: {failed} (see `possm plugins`)" if failed else ""
        raise PluginError(
            f"no {_SINGULAR[kind]} named {name!r}; available: {sorted(entries)}{hint}. "
            f"Third-party {kind.replace('_', ' ')} register through the {ENTRY_POINT_GROUP!r} entry-point group"
        ) from None


# -- public queries ---------------------------------------------------------------------------------
def load_backbones(register: Callable[..., Any]) -> None:
    """Register every plugin's backbones with ``register(name, factory)`` (the backbone registry's
    :func:`possm_plugin.model.backbones.register_backbone`). Idempotent."""
    for e in _entries("backbones").values():
        try:
            register(e.name, e.factory)
        except PossmError as exc:
            raise PluginError(f"backbone {e.name!r} from plugin {e.plugin!r} ({e.distribution}): {exc}") from None


def get_backbones() -> dict[str, PluginEntry]:
    """Backbones registered through plugins, by name."""
    return _entries("backbones")


def get_sources() -> dict[str, PluginEntry]:
    """Spike sources registered through plugins, by name."""
    return _entries("sources")


def get_source(name: str) -> Callable[..., Any]:
    """The factory of source ``name`` (a :class:`PluginError` listing the available ones if unknown)."""
    return _get("sources", name)


def get_sinks() -> dict[str, PluginEntry]:
    """Prediction sinks registered through plugins, by name."""
    return _entries("sinks")


def get_sink(name: str) -> Callable[..., Any]:
    """The factory of sink ``name``."""
    return _get("sinks", name)


def get_decoder_nodes() -> dict[str, PluginEntry]:
    """Decoder nodes registered through plugins, by name."""
    return _entries("decoder_nodes")


def get_decoder_node(name: str) -> Callable[..., Any]:
    """The factory of decoder node ``name`` (``"possm"`` is :class:`~possm_plugin.plugins.decoder_node.PossmDecoderNode`)."""
    return _get("decoder_nodes", name)


def list_plugins() -> list[PluginRow]:
    """Every hook implementation's registrations, in hook order then registration order. Never
    raises for a plugin's fault: clashes are added to :func:`list_failures`."""
    rows: list[PluginRow] = []
    for kind in HOOKS:
        c = _collect(kind)
        rows.extend(c.rows)
        for msg in c.clashes:
            f = PluginFailure("(clash)", HOOKS[kind], None, None, msg)
            with _lock:
                if f not in _failures:
                    _failures.append(f)
    return rows


def list_entries(kind: str) -> list[PluginEntry]:
    """What plugins registered for ``kind`` (a key of :data:`HOOKS`), clashing names left out."""
    if kind not in HOOKS:
        raise PluginError(f"kind={kind!r} is not one of {list(HOOKS)}")
    return list(_collect(kind).entries.values())


def list_failures() -> list[PluginFailure]:
    """Plugins that failed to load, or whose hooks failed or clashed, with the error (every hook is
    called first, so the list is complete)."""
    list_plugins()
    return list(_failures)


def list_skipped() -> list[PluginFailure]:
    """Entry points not loaded because ``POSSM_PLUGINS`` excludes them."""
    get_plugin_manager()
    return list(_skipped)
