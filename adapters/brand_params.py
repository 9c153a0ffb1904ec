"""``possm-brand``'s parameters: the node's entry in BRAND's ``supergraph_stream`` and its checks.

The names are those users put in their graph YAML (docs/brand.md lists them); keep them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from possm_plugin.adapters.redis_entries import CLOCKS, INPUT_DTYPES, KINDS
from possm_plugin.errors import ConfigError

__all__ = ["MIN_CALIBRATION_S", "SUPERGRAPH_STREAM", "NodeParameters", "read_node_parameters"]

SUPERGRAPH_STREAM = "supergraph_stream"
#: shortest online calibration: possm_plugin.realtime.calibration cuts 2 s pseudo-trials and needs 5 of them
MIN_CALIBRATION_S = 11.0


@dataclass
class NodeParameters:
    """The node's parameters, as named in the graph YAML (see docs/brand.md for each)."""

    input_stream: str = "thresh_cross"
    input_field: str | None = None
    input_dtype: str | None = None
    input_kind: str = "crossings"
    bin_size_ms: float | None = None
    n_channels: int | None = None
    checkpoint: str | None = None
    session: str | None = None
    unit_ids: list[str] | None = None
    output_stream: str | None = None
    output_field: str = "samples"
    output_dtype: str = "float32"
    output_maxlen: int | None = None
    device: str = "cpu"
    threads: int = 1
    prewarm_ms: float = 1.5
    calibrate_seconds: float | None = None
    label_stream: str | None = None
    label_field: str = "samples"
    label_dtype: str = "float32"
    calibrate_epochs: int | None = None  # None: as `possm finetune` (realtime.calibration.CALIBRATION_STEPS steps)
    calibrated_checkpoint: str | None = None
    clock: str = "tick"
    timestamps_rate: float = 30000.0
    sync_key: str = "sync"
    time_key: str = "ts"
    start: str = "$"
    resume: bool = True
    resume_max_seconds: float = 30.0
    log: str = "INFO"

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "NodeParameters":
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown} in the graph; possm-brand knows {sorted(known)}")
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d or d[f.name] is None:
                continue
            v = d[f.name]
            try:
                if f.name in ("n_channels", "output_maxlen", "calibrate_epochs", "threads"):
                    if isinstance(v, bool) or int(v) != float(v) or int(v) <= 0:
                        raise ValueError
                    v = int(v)
                elif f.name == "prewarm_ms":
                    v = float(v)
                    if not 0 <= v < 50:
                        raise ValueError
                elif f.name in ("bin_size_ms", "calibrate_seconds", "timestamps_rate", "resume_max_seconds"):
                    v = float(v)
                    if not v > 0:
                        raise ValueError
                elif f.name == "resume":
                    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                        v = v.strip().lower() in ("true", "yes", "on", "1")
                    elif isinstance(v, bool) or v in (0, 1):
                        v = bool(v)
                    else:
                        raise ValueError
                elif f.name == "unit_ids":
                    v = [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else [str(u) for u in v]
                else:
                    v = str(v)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"parameter {f.name}={d[f.name]!r} has the wrong type or value (expected {f.type})") from None
            kw[f.name] = v
        p = cls(**kw)
        if p.input_kind not in KINDS:
            raise ConfigError(f"parameter input_kind={p.input_kind!r} must be one of {KINDS}")
        if p.input_dtype is not None and p.input_dtype not in INPUT_DTYPES:
            raise ConfigError(f"parameter input_dtype={p.input_dtype!r} must be one of {INPUT_DTYPES}")
        if p.input_kind == "binned" and p.bin_size_ms is None:
            raise ConfigError("parameter input_kind='binned' needs bin_size_ms (the width of one input entry's bin, ms)")
        if p.clock not in CLOCKS:
            raise ConfigError(f"parameter clock={p.clock!r} must be one of {CLOCKS}")
        if p.output_dtype not in ("float32", "float64"):
            raise ConfigError(f"parameter output_dtype={p.output_dtype!r} must be float32 (BRAND's) or float64")
        if p.calibrate_seconds is not None and not p.label_stream:
            raise ConfigError("parameter calibrate_seconds needs label_stream (the Redis stream with the behaviour to calibrate on)")
        if p.calibrate_seconds is not None and p.calibrate_seconds < MIN_CALIBRATION_S:
            raise ConfigError(
                f"parameter calibrate_seconds={p.calibrate_seconds:g} is too short: unit identification needs at least "
                f"{MIN_CALIBRATION_S:g} s of spikes and behaviour (60-120 s calibrates well)"
            )
        if p.label_dtype not in ("int8", "int16", "int32", "float32", "float64"):
            raise ConfigError(f"parameter label_dtype={p.label_dtype!r} must be int8, int16, int32, float32 or float64")
        return p


def read_node_parameters(client, nickname: str) -> dict[str, Any]:
    """``nodes[nickname].parameters`` of the latest ``supergraph_stream`` entry (ConfigError if absent)."""
    entries = client.xrevrange(SUPERGRAPH_STREAM, "+", "-", count=1)
    if not entries:
        raise ConfigError(
            f"no supergraph in {SUPERGRAPH_STREAM!r}: start the graph through BRAND's supervisor "
            f"(XADD supervisor_ipstream * commands startGraph file GRAPH.yaml), or XADD the supergraph JSON yourself"
        )
    eid, flds = entries[0]
    raw = flds.get(b"data")
    if raw is None:
        raise ConfigError(f"the latest {SUPERGRAPH_STREAM!r} entry ({eid!r}) has no 'data' field")
    try:
        graph = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the latest {SUPERGRAPH_STREAM!r} entry's 'data' is not JSON ({exc})") from None
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    if not isinstance(nodes, dict):
        raise ConfigError(f"the supergraph has no 'nodes' mapping (keys: {sorted(graph) if isinstance(graph, dict) else type(graph).__name__})")
    node = nodes.get(nickname)
    if node is None:  # BRAND's own nodes match on the 'nickname' field
        node = next((n for n in nodes.values() if isinstance(n, dict) and n.get("nickname") == nickname), None)
    if node is None:
        raise ConfigError(f"node {nickname!r} is not in the supergraph (its nodes: {sorted(nodes)})")
    if not isinstance(node, dict):
        raise ConfigError(f"nodes[{nickname!r}] in the supergraph is a {type(node).__name__}, not a mapping")
    params = node.get("parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"nodes[{nickname!r}].parameters is not a mapping")
    return params

