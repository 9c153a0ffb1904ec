"""Spike events from any BrainFlow board: causal band-pass, running RMS, threshold crossings.

::

    possm-lsl --source brainflow --source-opt board=synthetic ...
    possm-lsl --source brainflow --source-opt board=playback --source-opt file=rec.csv --source-opt master_board=synthetic

    from possm_plugin.adapters.brainflow_board import BrainFlowSource
    with BrainFlowSource(board="synthetic", threshold=-4.5) as src:
        batch = src.acquire(timeout=0.1)

Per block of samples the board delivers, :class:`ThresholdDetector` band-passes, tracks the RMS and
finds threshold crossings (:mod:`possm_plugin.adapters.brainflow_detect`).

Each crossing becomes an event at its sample's time. The clock: the first sample's BrainFlow timestamp
(unix seconds) plus the sample count / sampling rate -- free of the jitter of the board's packets. The
watermark after a block is the time of the next sample to come.

Channels: the board's EXG rows (``channels`` picks rows by number or label); unit ids from the board
descriptor's ``eeg_names`` when it has them, else ``ch<row>``, prefixed with ``session/`` when
``session`` is given (``unit_ids`` overrides). BrainFlow 5 imports ``pkg_resources``: keep
``setuptools<81`` installed.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from possm_plugin.adapters.brainflow_detect import (  # the detector; its names stay importable from here
    MAX_SAMPLE,
    ThresholdDetector,
    _brainflow,
    effective_band,
)
from possm_plugin.errors import ConfigError, StreamError
from possm_plugin.plugins.markers import hookimpl
from possm_plugin.realtime.io import SpikeBatch, SpikeSource

__all__ = ["ThresholdDetector", "BrainFlowSource", "resolve_board", "effective_band", "possm_register_sources", "MAX_SAMPLE"]

log = logging.getLogger("possm_plugin.adapters.brainflow")



def resolve_board(board: Any) -> int:
    """A BrainFlow board id from an int, a numeric string or a name (``synthetic``, ``playback``,
    ``cyton``, ``CYTON_BOARD``, ...)."""
    BoardIds = _brainflow()[0]
    if isinstance(board, int) and not isinstance(board, bool):
        return int(board)
    s = str(board).strip()
    try:
        return int(s)
    except ValueError:
        pass
    aliases = {"synthetic": "SYNTHETIC_BOARD", "playback": "PLAYBACK_FILE_BOARD", "file": "PLAYBACK_FILE_BOARD"}
    key = aliases.get(s.lower(), s.upper().replace("-", "_"))
    for cand in (key, key + "_BOARD"):
        if cand in BoardIds.__members__:
            return int(BoardIds[cand].value)
    raise ConfigError(f"board={board!r} is not a BrainFlow board; use a BoardIds name (e.g. synthetic, cyton, playback) or its number")


def _floats(name: str, v: Any, n: int) -> tuple[float, ...]:
    parts = v.replace(";", ",").split(",") if isinstance(v, str) else list(v)
    try:
        out = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r} must be {n} numbers") from None
    if len(out) != n:
        raise ConfigError(f"{name}={v!r} must be {n} numbers")
    return out


def _num(name: str, v: Any, kind=float):
    try:
        out = kind(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r} is not a number") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise ConfigError(f"{name}={v!r} must be finite")
    return out


class BrainFlowSource(SpikeSource):
    """Threshold crossings from a BrainFlow board as spike events (see the module docstring).

    Options (strings accepted, as from ``--source-opt key=value``):
        board: BoardIds name or number (``synthetic``, ``playback``, ``cyton``, ...).
        serial_port, ip_address, ip_port, ip_protocol, mac_address, serial_number, other_info, timeout,
        file, master_board: BrainFlow's connection parameters (``file`` + ``master_board`` for the
        playback board).
        channels: rows to use (numbers or labels, comma-separated); default: the board's EXG rows.
        unit_ids: unit id per channel (comma-separated); session: prefix ``session/`` to the labels.
        threshold (-4.5), refractory_ms (1.0), band ("250,5000"), order (4), rms_window (5 s),
        warmup (1 s), history (s): see :class:`ThresholdDetector`.
        buffer_size: BrainFlow ring buffer, samples.
    """

    name = "brainflow"
    _PARAMS = ("serial_port", "ip_address", "ip_port", "ip_protocol", "mac_address", "serial_number", "other_info", "timeout", "file")

    def __init__(
        self,
        board: Any = "synthetic",
        *,
        channels: Any = None,
        unit_ids: Any = None,
        session: str | None = None,
        threshold: Any = -4.5,
        refractory_ms: Any = 1.0,
        band: Any = (250.0, 5000.0),
        order: Any = 4,
        rms_window: Any = 5.0,
        warmup: Any = 1.0,
        history: Any = None,
        master_board: Any = None,
        buffer_size: Any = 450_000,
        **params: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(params) - set(self._PARAMS))
        if unknown:
            raise ConfigError(
                f"brainflow source: unknown option(s) {unknown}; known: "
                f"{sorted(set(self._PARAMS) | {'board', 'channels', 'unit_ids', 'session', 'threshold', 'refractory_ms', 'band', 'order', 'rms_window', 'warmup', 'history', 'master_board', 'buffer_size'})}"
            )
        self.board_id = resolve_board(board)
        self.master_board = resolve_board(master_board) if master_board not in (None, "") else None
        self.params = {k: v for k, v in params.items() if v not in (None, "")}
        self.channel_option = channels
        self.unit_ids_option = unit_ids
        self.session = session
        self.detector_options = dict(
            band=_floats("band", band, 2), order=_num("order", order, int), threshold=_num("threshold", threshold),
            refractory_ms=_num("refractory_ms", refractory_ms), rms_window=_num("rms_window", rms_window),
            warmup=_num("warmup", warmup), history=None if history in (None, "") else _num("history", history),
        )
        if self.detector_options["threshold"] == 0:
            raise ConfigError("threshold=0 is not a multiple of the RMS; use e.g. -4.5")
        self.buffer_size = _num("buffer_size", buffer_size, int)
        self._board = None
        self.detector: ThresholdDetector | None = None
        self.fs = 0.0
        self.rows: list[int] = []
        self.t0: float | None = None

    @property
    def descriptor_board(self) -> int:
        """The board whose descriptor applies (the master board of a playback board)."""
        BoardIds = _brainflow()[0]
        if self.board_id in (BoardIds.PLAYBACK_FILE_BOARD.value, BoardIds.STREAMING_BOARD.value):
            return self.master_board if self.master_board is not None else BoardIds.SYNTHETIC_BOARD.value
        return self.board_id

    def _labels(self, BoardShim, BrainFlowError) -> tuple[list[int], list[str]]:
        bid = self.descriptor_board
        rows = list(BoardShim.get_exg_channels(bid))
        try:
            names = list(BoardShim.get_eeg_names(bid))
            eeg = list(BoardShim.get_eeg_channels(bid))
        except BrainFlowError:
            names, eeg = [], []
        label_of = {r: (names[eeg.index(r)] if r in eeg and len(names) == len(eeg) else f"ch{r}") for r in range(BoardShim.get_num_rows(bid))}
        if self.channel_option not in (None, ""):
            wanted = self.channel_option.split(",") if isinstance(self.channel_option, str) else list(self.channel_option)
            by_label = {v: k for k, v in label_of.items()}
            rows = []
            for w in (str(x).strip() for x in wanted):
                if w.lstrip("-").isdigit() and int(w) in label_of:
                    rows.append(int(w))
                elif w in by_label:
                    rows.append(by_label[w])
                else:
                    raise ConfigError(f"brainflow source: channel {w!r} is neither a row (0..{len(label_of) - 1}) nor a label of this board")
        labels = [label_of[r] for r in rows]
        return rows, labels

    def _connect(self, timeout: float | None) -> None:
        BoardIds, BoardShim, BrainFlowError, BrainFlowInputParams, _, _ = _brainflow()
        p = BrainFlowInputParams()
        for k, v in self.params.items():
            setattr(p, k, int(v) if k in ("ip_port", "ip_protocol", "timeout") else str(v))
        if self.master_board is not None:
            p.master_board = int(self.master_board)
        elif self.board_id == BoardIds.PLAYBACK_FILE_BOARD.value:
            p.master_board = BoardIds.SYNTHETIC_BOARD.value
        self.rows, labels = self._labels(BoardShim, BrainFlowError)
        if self.unit_ids_option not in (None, ""):
            ids = [s.strip() for s in self.unit_ids_option.split(",")] if isinstance(self.unit_ids_option, str) else [str(u) for u in self.unit_ids_option]
            if len(ids) != len(self.rows):
                raise ConfigError(f"brainflow source: unit_ids names {len(ids)} units for {len(self.rows)} channels")
            self.unit_ids = ids
        else:
            self.unit_ids = [f"{self.session}/{lab}" if self.session else lab for lab in labels]
        bid = self.descriptor_board
        self.fs = float(BoardShim.get_sampling_rate(bid))
        self._ts_row = BoardShim.get_timestamp_channel(bid)
        self.detector = ThresholdDetector(len(self.rows), self.fs, **self.detector_options)
        board = BoardShim(self.board_id, p)
        try:
            board.prepare_session()
            board.start_stream(self.buffer_size)
        except BrainFlowError as exc:
            try:
                if board.is_prepared():
                    board.release_session()
            except BrainFlowError:
                pass
            raise StreamError(f"BrainFlow board {self.board_id} could not start: {exc}") from None
        self._board = board
        self.t0 = None
        log.info("BrainFlow board %d at %g Hz, %d channels, band %g-%g Hz, threshold %g x RMS",
                 self.board_id, self.fs, len(self.rows), *self.detector.band, self.detector.threshold)

    def _acquire(self, timeout: float) -> SpikeBatch:
        board = self._board
        deadline = time.monotonic() + max(0.0, timeout)
        while board.get_board_data_count() == 0 and time.monotonic() < deadline:
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
        data = board.get_board_data()
        if data.shape[1] == 0:
            return SpikeBatch.empty(None if self.t0 is None else self.t0 + self.detector.n_seen / self.fs)
        if self.t0 is None:
            ts = np.asarray(data[self._ts_row], dtype=np.float64)
            ok = np.flatnonzero(np.isfinite(ts))
            if len(ok):  # the clock starts at the first sample: from the first finite timestamp, counted back
                self.t0 = float(ts[ok[0]]) - ok[0] / self.fs
            else:
                self.t0 = time.time()
                log.warning("BrainFlow board %d sent no finite timestamp; its clock starts at the local time", self.board_id)
        first = self.detector.n_seen
        ch, idx = self.detector.process(data[self.rows])
        batch = SpikeBatch(ch, self.t0 + idx / self.fs, self.t0 + self.detector.n_seen / self.fs)
        batch.start = self.t0 + first / self.fs
        return batch

    def _disconnect(self) -> None:
        board, self._board = self._board, None
        if board is None:
            return
        _, _, BrainFlowError, _, _, _ = _brainflow()
        try:
            board.stop_stream()
        except BrainFlowError:
            pass
        try:
            board.release_session()
        except BrainFlowError:
            pass


@hookimpl
def possm_register_sources(register):
    register("brainflow", BrainFlowSource, description="any BrainFlow board: band-pass, threshold crossings at -4.5 x RMS")
