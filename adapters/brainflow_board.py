"""Spike events from any BrainFlow board: causal band-pass, running RMS, threshold crossings.

::

    possm-lsl --source brainflow --source-opt board=synthetic ...
    possm-lsl --source brainflow --source-opt board=playback --source-opt file=rec.csv --source-opt master_board=synthetic

    from possm_plugin.adapters.brainflow_board import BrainFlowSource
    with BrainFlowSource(board="synthetic", threshold=-4.5) as src:
        batch = src.acquire(timeout=0.1)

Per block of samples the board delivers (:class:`ThresholdDetector`):

1. **Band-pass**, causal, with BrainFlow's own ``DataFilter.perform_bandpass`` (Butterworth, order 4,
   default 250-5000 Hz). BrainFlow's filters keep no state between calls, so each block is filtered
   together with the ``history`` seconds of raw signal before it (default: 8 periods of the low
   cut-off) -- minus the window's first sample, to remove the offset -- and only the new samples are
   kept: every output depends on past and present input only. If the board samples too slowly for the
   band, the band is clipped to what the board can carry: the high edge to 0.45 x the sampling rate,
   and, if the low edge is then not below half the high edge, the low edge to a tenth of the high
   edge. BrainFlow's synthetic board (250 Hz) thus gets 11.25-112.5 Hz.
2. **RMS**, causal: the mean square of the filtered signal, a plain running mean over the first
   ``warmup`` seconds (after the filter has settled for one ``history``), then an exponential average
   with time constant ``rms_window``, updated once per block -- a block is thresholded with the
   estimate from the blocks before it. Nothing is detected during the warm-up.
3. **Threshold crossings** at ``threshold`` x RMS (negative: the signal falls below; positive: rises
   above), at most one per ``refractory_ms`` per channel.

Bad samples: NaN or inf samples (a dropped packet, a board glitch) are replaced by the channel's last
finite sample, and samples beyond +-``MAX_SAMPLE`` are clipped, before filtering (counted in
``n_bad_samples``, logged at most every 5 s), so one bad sample can never turn the filter or the RMS
into NaN or inf for good.

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

from possm_plugin.errors import ConfigError, StreamError
from possm_plugin.plugins.markers import hookimpl
from possm_plugin.realtime.io import SpikeBatch, SpikeSource

__all__ = ["ThresholdDetector", "BrainFlowSource", "resolve_board", "effective_band", "possm_register_sources", "MAX_SAMPLE"]

log = logging.getLogger("possm_plugin.adapters.brainflow")

#: raw samples are clipped to +-this (no board measures it; it keeps squares and filters finite)
MAX_SAMPLE = 1e12


def _brainflow():
    try:
        from brainflow.board_shim import BoardIds, BoardShim, BrainFlowError, BrainFlowInputParams
        from brainflow.data_filter import DataFilter, FilterTypes
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"the BrainFlow source needs brainflow (pip install 'possm-plugin[brainflow]'; BrainFlow 5 also needs "
            f"setuptools<81): {exc}"
        ) from None
    return BoardIds, BoardShim, BrainFlowError, BrainFlowInputParams, DataFilter, FilterTypes


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


def effective_band(band: tuple[float, float], fs: float) -> tuple[float, float]:
    """The band the filter uses on a board sampling at ``fs`` (see the module docstring)."""
    low, high = float(band[0]), float(band[1])
    if not (0 < low < high):
        raise ConfigError(f"band={band!r} must be 0 < low < high (Hz)")
    high_eff = min(high, 0.45 * fs)
    low_eff = low if low < high_eff / 2 else high_eff / 10
    return low_eff, high_eff


class ThresholdDetector:
    """Causal band-pass + running RMS + threshold crossings on blocks of (C, N) samples.

    Args:
        n_channels: C.
        fs: sampling rate, Hz.
        band: (low, high) Hz, clipped by :func:`effective_band`.
        order: Butterworth order.
        threshold: multiple of the RMS (negative: downward crossings).
        refractory_ms: dead time after a crossing, per channel.
        rms_window: time constant of the running RMS, seconds.
        warmup: seconds of plain running mean before detection starts.
        history: seconds of past signal filtered with each block (default: 8 / low cut-off).
    """

    def __init__(
        self,
        n_channels: int,
        fs: float,
        *,
        band: tuple[float, float] = (250.0, 5000.0),
        order: int = 4,
        threshold: float = -4.5,
        refractory_ms: float = 1.0,
        rms_window: float = 5.0,
        warmup: float = 1.0,
        history: float | None = None,
    ) -> None:
        if threshold == 0 or not math.isfinite(threshold):
            raise ConfigError(f"threshold={threshold!r} must be a non-zero multiple of the RMS (e.g. -4.5)")
        if not fs > 0:
            raise ConfigError(f"sampling rate {fs!r} must be positive")
        self.n_channels, self.fs = int(n_channels), float(fs)
        self.band = effective_band(band, fs)
        if self.band != (float(band[0]), float(band[1])):
            log.warning("band %g-%g Hz does not fit a %g Hz board; using %g-%g Hz", band[0], band[1], fs, *self.band)
        self.order = int(order)
        self.threshold = float(threshold)
        self.refractory = max(1, int(math.ceil(refractory_ms * 1e-3 * self.fs)))
        self.rms_tau = float(rms_window) * self.fs
        self.history = int(math.ceil((8.0 / self.band[0] if history is None else float(history)) * self.fs))
        self.warmup = int(math.ceil(float(warmup) * self.fs))
        self._hist = np.zeros((self.n_channels, 0))
        self._prev = np.zeros(self.n_channels)
        self._ms = np.zeros(self.n_channels)
        self._ms_n = 0
        self._last = np.full(self.n_channels, -(10**12), dtype=np.int64)
        self._last_raw = np.zeros(self.n_channels)
        self.n_seen = 0
        self.n_crossings = 0
        self.n_bad_samples = 0
        self._bad_logged = -math.inf

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self._ms)

    @property
    def ready(self) -> bool:
        return self.n_seen >= self.history + self.warmup

    def filter(self, x: np.ndarray) -> np.ndarray:
        """Band-pass one block causally (updates the raw history)."""
        _, _, _, _, DataFilter, FilterTypes = _brainflow()
        n = x.shape[1]
        win = np.concatenate([self._hist, x], axis=1)
        out = np.empty_like(x)
        fs = int(round(self.fs))
        for c in range(self.n_channels):
            w = np.ascontiguousarray(win[c] - win[c, 0], dtype=np.float64)
            DataFilter.perform_bandpass(w, fs, self.band[0], self.band[1], self.order, FilterTypes.BUTTERWORTH.value, 0.0)
            out[c] = w[-n:]
        self._hist = win[:, -self.history:] if self.history else win[:, :0]
        return out

    def process(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Crossings in a (C, N) block: (channels, absolute sample indices), in time order."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.n_channels:
            raise ValueError(f"expected a ({self.n_channels}, N) block, got {x.shape}")
        n = x.shape[1]
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        x = self._sanitize(x)
        y = self.filter(x)
        start = self.n_seen
        chans, idx = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.ready:
            thr = (self.threshold * self.rms)[:, None]
            prev = np.concatenate([self._prev[:, None], y[:, :-1]], axis=1)
            hit = (y < thr) & (prev >= thr) if self.threshold < 0 else (y > thr) & (prev <= thr)
            cs, ks = np.nonzero(hit)
            keep_c, keep_k = [], []
            for c, k in zip(cs.tolist(), ks.tolist()):  # sparse: refractory per channel, in time order
                if start + k - self._last[c] >= self.refractory:
                    self._last[c] = start + k
                    keep_c.append(c)
                    keep_k.append(start + k)
            if keep_c:
                order = np.argsort(np.asarray(keep_k), kind="stable")
                chans = np.asarray(keep_c, np.int64)[order]
                idx = np.asarray(keep_k, np.int64)[order]
        self._update_rms(y, start)
        self._prev = y[:, -1].copy()
        self.n_seen += n
        self.n_crossings += len(idx)
        return chans, idx

    def _sanitize(self, x: np.ndarray) -> np.ndarray:
        """Replace NaN/inf samples by the channel's last finite one and clip to +-MAX_SAMPLE (counted)."""
        bad = ~np.isfinite(x)
        huge = ~bad & (np.abs(np.where(bad, 0.0, x)) > MAX_SAMPLE)
        if bad.any() or huge.any():
            n_bad = int(bad.sum() + huge.sum())
            self.n_bad_samples += n_bad
            now = time.monotonic()
            if now - self._bad_logged >= 5.0:
                self._bad_logged = now
                log.warning("%d NaN/inf/absurd samples held at the last finite value or clipped (%d so far)", n_bad, self.n_bad_samples)
            x = np.clip(np.where(bad, np.nan, x), -MAX_SAMPLE, MAX_SAMPLE)
            if bad.any():  # forward-fill each channel from its last finite sample
                n = x.shape[1]
                idx = np.where(bad, -1, np.arange(n)[None, :])
                np.maximum.accumulate(idx, axis=1, out=idx)
                filled = np.take_along_axis(x, np.maximum(idx, 0), axis=1)
                x = np.where(idx < 0, self._last_raw[:, None], filled)
        self._last_raw = x[:, -1].copy()
        return x

    def _update_rms(self, y: np.ndarray, start: int) -> None:
        skip = max(0, self.history - start)  # the filter's start-up transient
        if skip >= y.shape[1]:
            return
        sq = np.square(y[:, skip:])
        m = sq.shape[1]
        if self._ms_n < self.warmup:
            self._ms = (self._ms * self._ms_n + sq.sum(axis=1)) / (self._ms_n + m)
        else:
            a = math.exp(-m / self.rms_tau)
            self._ms = a * self._ms + (1 - a) * sq.mean(axis=1)
        self._ms_n += m


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
