"""Checkpoints: ``NAME.safetensors`` (weights) beside ``NAME.yaml`` (everything else).

The YAML holds the format version, the package version that wrote it, the model config, the unit and
session vocabularies, each session's ordered units and content fingerprint (``session_fingerprints``,
see :mod:`possm_plugin.data.identity`; optional, older checkpoints have none), the default session and
free-form training metadata. Loading never unpickles anything: the YAML is read with the safe loader and validated, the
weights with safetensors, and every tensor's name, shape and dtype is checked against the model the
config rebuilds. Any mismatch is a :class:`CheckpointError` that says what is wrong.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from possm_plugin.errors import CheckpointError, PossmError
from possm_plugin.model.config import ModelConfig
from possm_plugin.model.possm import POSSM

__all__ = ["save_checkpoint", "write_safetensors", "load_checkpoint", "read_checkpoint_config", "resolve_checkpoint", "default_checkpoint", "bundled_checkpoint",
           "BUNDLED_CHECKPOINTS", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_WEIGHTS, _CONFIG = ".safetensors", ".yaml"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("possm-plugin")
    except Exception:  # running from a source tree without installation
        return "0+unknown"


#: checkpoints bundled with the package, by the name that ``--checkpoint NAME`` and ``possm info NAME``
#: accept (docs/default-checkpoint.md says how each was made): ``default`` on simulated sessions (what
#: the live nodes and the demo use), ``chewie`` on the two bundled real recordings (the start of
#: ``possm finetune`` on real binned sessions)
BUNDLED_CHECKPOINTS = ("default", "chewie")


def bundled_checkpoint(name: str) -> Path:
    """The YAML of the bundled checkpoint ``name`` (one of :data:`BUNDLED_CHECKPOINTS`)."""
    if name not in BUNDLED_CHECKPOINTS:
        raise CheckpointError(f"no bundled checkpoint {name!r}; the bundled ones are {', '.join(BUNDLED_CHECKPOINTS)}")
    return Path(__file__).resolve().parents[1] / "assets" / f"{name}.yaml"


def default_checkpoint() -> Path:
    """The checkpoint bundled with the package (see docs/default-checkpoint.md for how it was made)."""
    return bundled_checkpoint("default")


def resolve_checkpoint(path: str | os.PathLike | None) -> tuple[Path, Path]:
    """``(weights, config)`` paths from a ``.safetensors`` file, a ``.yaml`` file, a stem, or a
    directory holding one checkpoint (``best`` preferred, then ``last``), or the name of a bundled one
    (:data:`BUNDLED_CHECKPOINTS`) where no such path exists. None gives the default."""
    p = default_checkpoint() if path is None else Path(path)
    if path is not None and str(path) in BUNDLED_CHECKPOINTS and not p.exists():
        p = bundled_checkpoint(str(path))
    if p.is_dir():
        for stem in ("best", "last", "model", "default"):
            if (p / f"{stem}{_CONFIG}").is_file():
                p = p / f"{stem}{_CONFIG}"
                break
        else:
            cands = sorted(p.glob(f"*{_CONFIG}"))
            if len(cands) != 1:
                raise CheckpointError(f"directory {str(p)!r} does not hold exactly one checkpoint (*{_CONFIG} + *{_WEIGHTS})")
            p = cands[0]
    if p.suffix in (_WEIGHTS, _CONFIG):
        stem = p.with_suffix("")
    else:
        stem = p
    weights, config = stem.with_suffix(_WEIGHTS), stem.with_suffix(_CONFIG)
    for f in (config, weights):
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {str(f)!r} does not exist (a checkpoint is NAME{_WEIGHTS} + NAME{_CONFIG})")
    return weights, config


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, *, metadata: dict[str, str]) -> str:
    """Write ``tensors`` to the safetensors file ``path``, created like any other file (mode 0666 less
    the umask: safetensors' own ``save_file`` makes it 0600 whatever the umask, so the weights of a
    checkpoint would not be readable where its YAML is); returns the file's sha256 (hex)."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(model: POSSM, path: str | os.PathLike, *, default_session: str | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (.yaml) and its .safetensors twin atomically; returns the YAML path. Both files
    get the same mode (0666 less the umask)."""
    stem = Path(path)
    if stem.suffix in (_WEIGHTS, _CONFIG):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights, config = stem.with_suffix(_WEIGHTS), stem.with_suffix(_CONFIG)
    tmp_w = weights.with_name(weights.name + ".tmp")
    sha = write_safetensors(tensors, tmp_w, metadata={"format": "possm-plugin", "format_version": str(FORMAT_VERSION)})
    sessions = model.session_vocab.ids
    doc = {
        "format": "possm-plugin",
        "format_version": FORMAT_VERSION,
        "possm_plugin_version": _version(),
        "model": model.config.to_dict(),
        "unit_ids": model.unit_vocab.ids,
        "session_ids": sessions,
        "session_units": {s: list(u) for s, u in model.session_units.items()},
        "session_fingerprints": {s: str(f) for s, f in model.session_fingerprints.items()},
        "default_session": default_session if default_session is not None else (sessions[0] if sessions else None),
        "weights_sha256": sha,
        "meta": _plain(meta or {}),
    }
    tmp_c = config.with_name(config.name + ".tmp")
    tmp_c.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp_w, weights)
    os.replace(tmp_c, config)
    return config


def _plain(x: Any) -> Any:
    """Make metadata YAML-safe (numpy scalars and arrays to Python)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def read_checkpoint_config(path: str | os.PathLike | None) -> dict[str, Any]:
    """The validated YAML document of a checkpoint (no weights read)."""
    _, config = resolve_checkpoint(path)
    try:
        doc = yaml.safe_load(config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint config {str(config)!r} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != "possm-plugin":
        raise CheckpointError(f"{str(config)!r} is not a possm-plugin checkpoint config (no 'format: possm-plugin')")
    v = doc.get("format_version")
    if v != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(config)!r} has format_version {v!r}; this possm-plugin reads version {FORMAT_VERSION}"
        )
    for key, typ in (("model", dict), ("unit_ids", list), ("session_ids", list), ("session_units", dict)):
        if not isinstance(doc.get(key), typ):
            raise CheckpointError(f"checkpoint config {str(config)!r}: {key!r} is missing or not a {typ.__name__}")

    def strings(x) -> bool:
        return isinstance(x, list) and all(isinstance(u, str) for u in x)

    for key in ("unit_ids", "session_ids"):
        if not strings(doc[key]):
            raise CheckpointError(f"checkpoint config {str(config)!r}: {key!r} must be a list of strings")
    if not all(isinstance(k, str) and strings(v) for k, v in doc["session_units"].items()):
        raise CheckpointError(f"checkpoint config {str(config)!r}: 'session_units' must map session ids to lists of unit ids")
    fps = doc.get("session_fingerprints")
    if fps is not None and not (
        isinstance(fps, dict) and all(isinstance(k, str) and k in doc["session_ids"] and isinstance(v, str) for k, v in fps.items())
    ):
        raise CheckpointError(
            f"checkpoint config {str(config)!r}: 'session_fingerprints' must map known session ids to fingerprint strings"
        )
    for key in ("default_session", "weights_sha256"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise CheckpointError(f"checkpoint config {str(config)!r}: {key!r} must be a string, got {doc[key]!r}")
    ds = doc.get("default_session")
    if ds is not None and ds not in doc["session_ids"]:
        raise CheckpointError(f"checkpoint config {str(config)!r}: default_session {ds!r} is not among its sessions")
    return doc


def load_checkpoint(path: str | os.PathLike | None = None, *, map_location: str | torch.device = "cpu", verify_hash: bool = True) -> tuple[POSSM, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights; returns ``(model, config_document)``.

    ``path`` may name the .yaml, the .safetensors, their common stem, or a directory; None loads the
    bundled default. The model is returned in eval mode.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, config = resolve_checkpoint(path)
    doc = read_checkpoint_config(config)
    data = weights.read_bytes()
    if verify_hash and doc.get("weights_sha256") and hashlib.sha256(data).hexdigest() != doc["weights_sha256"]:
        raise CheckpointError(
            f"checkpoint weights {str(weights)!r} do not match the sha256 in {str(config)!r}: the file is corrupt or "
            f"belongs to another checkpoint"
        )
    try:
        cfg = ModelConfig.from_dict(doc["model"])
        model = POSSM(cfg, unit_ids=doc["unit_ids"], session_ids=doc["session_ids"], session_units=doc["session_units"],
                      session_fingerprints=doc.get("session_fingerprints") or {})
    except (PossmError, TypeError, ValueError, KeyError, RuntimeError) as exc:  # e.g. backbone_kwargs of the wrong type
        raise CheckpointError(f"checkpoint {str(config)!r}: {exc}") from None
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint weights {str(weights)!r} are not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {str(weights)!r} does not match its config: missing tensors {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, ref in expected.items():
        got = tensors[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(
                f"checkpoint {str(weights)!r}: tensor {name!r} has shape {tuple(got.shape)} {got.dtype}, "
                f"the config builds {tuple(ref.shape)} {ref.dtype}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"checkpoint {str(weights)!r}: tensor {name!r} contains NaN or inf")
    model.load_state_dict(tensors)
    model.to(map_location).eval()
    return model, doc
