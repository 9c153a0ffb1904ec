"""Online calibration of a session the checkpoint has never seen (``possm-lsl --calibrate SECONDS``).

1. **Collect** ``SECONDS`` of spikes from the source and of behaviour from a second stream (e.g. the
   simulator's true velocity); nothing is decoded meanwhile.
2. **Build** a :class:`~possm_plugin.data.session.Session` from them: the span both cover, shifted to start
   at 0, cut into pseudo-trials of ``trial_s`` seconds (the last 20 % validate), all of phase "other".
   Unit ids are the stream's labels; a stream without labels gets ``<session_id>/<index>``
   (a source that learns its electrodes from the data keeps those seen while collecting: ``freeze_units``).
3. **Unit identification** in a background thread, backbone frozen:
   :func:`possm_plugin.training.finetune.finetune` with ``mode="ui"`` adds the new unit and session ids to
   the vocabularies and trains only their embedding rows. Meanwhile the source is drained (its data
   are dropped, not queued) and progress is logged.
4. The calibrated model is returned (and optionally saved); the caller decodes with it from then on,
   with a fresh state. The calibration R2 (on the held-out end of the collected span) is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from possm_plugin.data.session import Session
from possm_plugin.errors import ConfigError, DataError, StreamError
from possm_plugin.model.possm import POSSM
from possm_plugin.realtime.io import SpikeSource
from possm_plugin.realtime.unit_map import new_unit_ids
from possm_plugin.training.recipe import BUDGETS as RECIPE_BUDGETS

__all__ = ["collect", "build_session", "calibrate", "calibrate_online"]

log = logging.getLogger("possm_plugin.realtime.calibration")

#: optimiser steps of an online calibration by default: the recipe's quick budget (the real-data
#: benchmark's), with which unit identification on a quarter of a recorded session's trials reached the
#: Wiener filter (docs/real-data.md); kept short because the decoder starts only after it
CALIBRATION_STEPS = RECIPE_BUDGETS["quick"]


def collect(source: SpikeSource, labels, seconds: float, *, stop_event: threading.Event | None = None, poll: float = 0.01):
    """Read ``seconds`` of spikes (``source.acquire``) and behaviour (``labels.acquire`` -> times,
    values). Returns ``(channels, times, label_times, label_values)``; invalid channels are dropped."""
    chans, times, lt, lv = [], [], [], []
    t_end = time.monotonic() + float(seconds)
    last_log = time.monotonic()
    while time.monotonic() < t_end and not (stop_event is not None and stop_event.is_set()):
        b = source.acquire(timeout=poll)
        if len(b):
            n = len(source.unit_ids)  # read per batch: a source may learn its units from the data
            c = np.asarray(b.channels, np.float64)
            ok = np.isfinite(c) & np.isfinite(b.times) & (c >= 0) & (c < n) & (c == np.floor(c))
            chans.append(c[ok].astype(np.int64))
            times.append(np.asarray(b.times, np.float64)[ok])
        t, v = labels.acquire(0.0)
        if len(t):
            lt.append(t)
            lv.append(v)
        if time.monotonic() - last_log > 5.0:
            last_log = time.monotonic()
            log.info("calibration: collecting, %.0f s left (%d spikes, %d behaviour samples so far)",
                     max(0.0, t_end - last_log), sum(map(len, times)), sum(map(len, lt)))

    def cat(xs, shape=(0,)):
        return np.concatenate(xs) if xs else np.zeros(shape)

    width = lv[0].shape[1] if lv else 0
    return cat(chans).astype(np.int64), cat(times), cat(lt), cat(lv, (0, width))


def build_session(
    session_id: str,
    unit_ids: Sequence[str],
    channels: np.ndarray,
    times: np.ndarray,
    label_times: np.ndarray,
    label_values: np.ndarray,
    *,
    target_names: Sequence[str],
    target_scale: float = 1.0,
    trial_s: float = 2.0,
) -> Session:
    """A regression session from collected spikes and behaviour (see the module doc)."""
    if len(times) == 0:
        raise DataError("calibration collected no spikes; is the source streaming?")
    if len(label_times) < 2:
        raise DataError("calibration collected no behaviour samples; is the labels stream streaming?")
    order = np.argsort(label_times, kind="stable")
    lt, lv = np.asarray(label_times, np.float64)[order], np.asarray(label_values, np.float32)[order]
    keep = np.concatenate([[True], np.diff(lt) > 0])
    lt, lv = lt[keep], lv[keep]
    finite = np.all(np.isfinite(lv), axis=1)
    lt, lv = lt[finite], lv[finite]
    a = max(float(np.min(times)), float(lt[0]))
    b = min(float(np.max(times)), float(lt[-1]))
    if b - a < 5 * trial_s:
        raise DataError(f"calibration: spikes and behaviour overlap for only {max(0.0, b - a):.1f} s; collect longer (--calibrate)")
    sel = (times >= a) & (times <= b)
    order = np.argsort(times[sel], kind="stable")
    st, sc = times[sel][order] - a, channels[sel][order]
    lsel = (lt >= a) & (lt <= b)
    n_trials = int((b - a) // trial_s)
    trials = np.stack([np.arange(n_trials) * trial_s, (np.arange(n_trials) + 1) * trial_s], axis=1)
    return Session(
        session_id=session_id, spike_times=st, spike_units=sc, unit_ids=list(unit_ids), target_times=lt[lsel] - a,
        targets=lv[lsel], trials=trials, target_names=list(target_names), target_scale=target_scale,
        meta={"source": "online calibration", "clock_origin": a},
    )


def calibrate(model: POSSM, session: Session, *, epochs: int | None = None, lr: float | None = None,
              batch_size: int | None = None, seed: int = 0, drain=None, stop_event: threading.Event | None = None) -> dict:
    """Unit identification of ``session`` in a background thread (``drain()`` is called meanwhile,
    e.g. to empty the source); returns finetune's metrics.

    Trained as ``possm finetune`` and the real-data benchmark adapt a model
    (:func:`possm_plugin.training.recipe.recipe_config`: batch 16, spikes re-placed inside their chunks,
    weight average, learning rate ``UI_LR``), for at least :data:`CALIBRATION_STEPS` optimiser steps, or
    exactly ``epochs`` epochs when given."""
    from possm_plugin.data.identity import check_sessions
    from possm_plugin.training.finetune import finetune
    from possm_plugin.training.recipe import UI_LR, recipe_config

    if epochs is None:
        cfg = recipe_config(seed=seed, min_steps=CALIBRATION_STEPS)
    else:
        cfg = recipe_config(seed=seed, min_steps=0, epochs=int(epochs))
    lr = UI_LR if lr is None else lr
    batch_size = cfg.batch_size if batch_size is None else batch_size
    check_sessions(model, [session])  # here, before the training thread starts: one clear error
    result: dict = {}
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.update(finetune(model, [session], mode="ui", epochs=cfg.epochs, lr=lr, batch_size=batch_size, seed=seed,
                                   train_config=cfg))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    th = threading.Thread(target=work, name="possm-calibration", daemon=True)
    t0 = time.monotonic()
    th.start()
    last = t0
    warned = False
    while th.is_alive():
        if drain is not None:
            drain()
        th.join(0.02)  # leave the training thread the interpreter
        if time.monotonic() - last > 5.0:
            last = time.monotonic()
            log.info("calibration: unit identification running (%.0f s)", last - t0)
        if stop_event is not None and stop_event.is_set() and not warned:
            warned = True
            log.warning("calibration interrupted; waiting for the training thread to end")
    th.join()
    if error:
        raise error[0]
    result["seconds"] = round(time.monotonic() - t0, 2)
    return result


def _freeze_units(source: SpikeSource) -> None:
    """A source that learns its unit ids from the data (``discovers_units``, e.g. an LSL event stream
    without electrode labels) keeps those seen while collecting: later ones are unknown channels."""
    freeze = getattr(source, "freeze_units", None)
    if getattr(source, "discovers_units", False) and callable(freeze):
        freeze()


def calibrate_online(
    model: POSSM,
    source: SpikeSource,
    *,
    labels: str | object,
    seconds: float,
    epochs: int | None = None,
    resolve_timeout: float = 5.0,
    stop_event: threading.Event | None = None,
    session_id: str | None = None,
    save_to: str | Path | None = None,
) -> tuple[POSSM, str, list[str], dict]:
    """Collect, build, calibrate (see the module doc). ``labels`` is an LSL stream name or an object
    with ``connect()``/``acquire(timeout)``/``disconnect()``. Returns ``(model, session_id,
    unit_ids, metrics)``: decode the stream's channels as ``unit_ids`` in session ``session_id``;
    ``metrics`` are finetune's (``valid_r2`` is the calibration R2) plus ``seconds``."""
    if not seconds > 0:
        raise ConfigError(f"calibration seconds={seconds!r} must be positive")
    if isinstance(labels, str):
        from possm_plugin.adapters.lsl import LSLSignalInlet

        labels = LSLSignalInlet(labels, resolve_timeout=resolve_timeout)
    try:
        labels.connect()
    except StreamError as exc:
        raise StreamError(f"calibration labels: {exc}") from None
    cfg = model.config
    if cfg.readout != "regression":
        raise ConfigError(f"online calibration needs a regression model (this one is {cfg.readout!r})")
    names = list(getattr(labels, "channel_names", []) or cfg.output_names)
    try:
        if len(names) != cfg.output_dim:
            raise ConfigError(f"the labels stream has {len(names)} channels {names}; the model decodes {cfg.output_dim} ({cfg.output_names})")
        session_id = session_id or time.strftime("calib-%Y%m%d-%H%M%S")
        has_labels = getattr(source, "has_labels", True)
        log.info("calibration: collecting %g s of spikes (%s) and behaviour; nothing is decoded meanwhile", seconds,
                 "units from the data" if getattr(source, "discovers_units", False) else f"{len(source.unit_ids)} units")
        ch, t, lt, lv = collect(source, labels, seconds, stop_event=stop_event)
        _freeze_units(source)
        unit_ids = list(source.unit_ids) if has_labels else new_unit_ids(session_id, source.unit_ids)
        if stop_event is not None and stop_event.is_set():
            return model, session_id, unit_ids, {}
        session = build_session(session_id, unit_ids, ch, t, lt, lv, target_names=cfg.output_names, target_scale=cfg.target_scale)
        log.info("calibration: %d spikes, %.1f s; unit identification (%s) in the background", len(session.spike_times), session.duration,
                 f"{epochs} epochs" if epochs else f"at least {CALIBRATION_STEPS} optimiser steps")

        def drain() -> None:
            source.acquire(timeout=0.05)
            labels.acquire(0.0)

        metrics = calibrate(model, session, epochs=epochs, drain=drain, stop_event=stop_event)
    finally:
        labels.disconnect()
    r2 = metrics.get("valid_r2")
    log.info(
        "calibration done in %.1f s: %d new units, %d trainable parameters (%.2f%% of the model), calibration R2 %s",
        metrics["seconds"], metrics.get("new_units", 0), metrics.get("trainable_parameters", 0),
        100 * metrics.get("trainable_fraction", 0.0), "n/a" if r2 is None else f"{r2:.3f}",
    )
    if save_to:
        from possm_plugin.model.checkpoint import save_checkpoint

        path = save_checkpoint(model, save_to, default_session=session_id, meta={"calibration": {k: v for k, v in metrics.items() if k != "history"}})
        log.info("calibrated checkpoint written to %s", path)
    return model, session_id, unit_ids, metrics
