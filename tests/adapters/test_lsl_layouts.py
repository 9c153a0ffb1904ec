"""How ``possm-lsl`` reads a spike-event stream's layout (the field labels of its samples, however a
sender spells them; unit ids from labels, ``n_units`` or the data), and two edges of its command line
(liblsl's own log lines, ``--duration`` with ``--calibrate``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import lsl_helpers as lh  # sets LSLAPICFG before anything talks to liblsl
import numpy as np
import pylsl
import pytest

from possm_plugin.adapters.lsl import LSLSource, event_fields
from possm_plugin.cli import lsl_node
from possm_plugin.errors import ConfigError

NDS_WAVEFORM = [str(i) for i in range(48)]


@pytest.mark.parametrize("labels, want", [
    (["channels", "units", *NDS_WAVEFORM], (0, 1)),  # neural-data-simulator 0.2.10 ephys_generator
    (["ch_id", "unit_id"], (0, 1)),  # its streamer
    (["Channel", "Unit", "w0"], (0, 1)),
    (["electrode number", "sort code"], (0, 1)),
    (["chan_idx"], (0, None)),
    (["timestamp_us", "Electrode", "cluster"], (1, 2)),
    (["units"], (0, None)),
    (["u0", "u1", "u2"], None),  # electrode labels
    (["ch1", "ch2", "ch3"], None),
    (["elec001", "elec002"], None),
    ([], None),
])
def test_event_fields_recognises_field_labels_however_spelled(labels, want):
    assert event_fields(labels) == want


def _spike_outlet(name: str, labels: list[str], n_fields: int) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo(name, "SpikeEvents", n_fields, pylsl.IRREGULAR_RATE, "int16", "sid-" + name)
    chans = info.desc().append_child("channels")
    for lab in labels:
        chans.append_child("channel").append_child_value("label", lab)
    return pylsl.StreamOutlet(info)


def _pull(src: LSLSource, n: int) -> np.ndarray:
    got, deadline = [], time.monotonic() + 10
    while sum(len(b) for b in got) < n and time.monotonic() < deadline:
        got.append(src.acquire(0.05))
    return np.concatenate([b.channels for b in got])


def test_nds_layout_units_from_n_units_or_from_the_data():
    """NDS's SpikeEvents: 50 fields labelled channels, units, 0..47. The labels are not 50 electrodes:
    the units are 0..n_units-1, or, without n_units, the electrodes seen until freeze_units()."""
    name = lh.unique("ndslayout")
    outlet = _spike_outlet(name, ["channels", "units", *NDS_WAVEFORM], 50)
    fixed = LSLSource(name, resolve_timeout=10, idle_delay=10.0, n_units=96).connect()
    learn = LSLSource(name, resolve_timeout=10, idle_delay=10.0).connect()
    try:
        assert fixed.unit_ids == [str(i) for i in range(96)] and not fixed.has_labels and not fixed.discovers_units
        assert learn.unit_ids == [] and learn.discovers_units
        for src in (fixed, learn):
            src.acquire(0.0)
        deadline = time.monotonic() + 10
        while not outlet.have_consumers() and time.monotonic() < deadline:
            time.sleep(0.01)
        samples = np.zeros((3, 50), np.int16)
        samples[:, 0] = [3, 189, 70]  # electrodes; field 1 (unit) is 0, the waveform follows
        samples[:, 2:] = 7
        outlet.push_chunk(samples)
        np.testing.assert_array_equal(_pull(fixed, 3), [3, 189, 70])  # 189 >= n_units: unknown to the decoder
        np.testing.assert_array_equal(_pull(learn, 3), [3, 189, 70])
        assert learn.unit_ids == [str(i) for i in range(190)]
        assert learn.freeze_units() == [str(i) for i in range(190)] and not learn.discovers_units
        samples[:, 0] = [200, 1, 2]
        outlet.push_chunk(samples)
        np.testing.assert_array_equal(_pull(learn, 3), [200, 1, 2])
        assert len(learn.unit_ids) == 190  # frozen: electrode 200 stays unknown
    finally:
        fixed.disconnect()
        learn.disconnect()


def test_labels_that_could_be_fields_or_electrodes_are_read_as_electrodes_with_a_warning(caplog):
    name = lh.unique("ambiguous")
    outlet = _spike_outlet(name, ["a", "b", "c"], 3)  # noqa: F841 - kept open for the source
    with caplog.at_level(logging.WARNING, logger="possm_plugin.adapters.lsl"):
        src = LSLSource(name, resolve_timeout=10).connect()
    try:
        assert src.unit_ids == ["a", "b", "c"] and src.has_labels
        assert "pass --source-opt channel_labels=fields" in caplog.text
    finally:
        src.disconnect()
    forced = LSLSource(name, resolve_timeout=10, channel_labels="fields", n_units=4).connect()
    try:
        assert forced.unit_ids == ["0", "1", "2", "3"] and not forced.has_labels
    finally:
        forced.disconnect()
    with pytest.raises(ConfigError, match="channel_labels='wires' must be one of"):
        LSLSource(name, channel_labels="wires")
    with pytest.raises(ConfigError, match="n_units=0 must be a whole number"):
        LSLSource(name, n_units=0)


@pytest.mark.slow
def test_liblsl_info_lines_stay_off_the_terminal_unless_debug(tmp_path):
    """A process that sets liblsl's level from --log-level INFO prints none of liblsl's INFO| lines (which
    it prints at start-up with a config file that sets no level); at DEBUG it does."""
    cfg = tmp_path / "lsl_api.cfg"
    cfg.write_text("[multicast]\nResolveScope = machine\n")
    name = lh.unique("quiet")
    code = ("import sys; from possm_plugin.adapters.lsl_log import set_liblsl_log_level as s; print(s(sys.argv[1])); "
            f"import pylsl; o = pylsl.StreamOutlet(pylsl.StreamInfo({name!r}, 'T', 1, 0, 'float32', {name!r})); "
            f"print(len(pylsl.resolve_byprop('name', {name!r}, 1, 5)))")
    env = dict(os.environ, LSLAPICFG=str(cfg), PYTHONPATH=os.pathsep.join(sys.path))
    quiet = subprocess.run([sys.executable, "-c", code, "INFO"], capture_output=True, text=True, env=env, timeout=60, check=False)
    loud = subprocess.run([sys.executable, "-c", code, "DEBUG"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert quiet.returncode == 0 and quiet.stdout.split()[0] == "-1", quiet.stderr
    assert "INFO|" not in quiet.stderr, quiet.stderr
    assert loud.stdout.split()[0] == "None" and "INFO|" in loud.stderr, loud.stderr  # the check can fail
    cfg.write_text("[multicast]\nResolveScope = machine\n[log]\nlevel = 0\n")  # the user's own level wins
    own = subprocess.run([sys.executable, "-c", code, "INFO"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert own.stdout.split()[0] == "None" and "INFO|" in own.stderr


def test_duration_help_says_it_counts_from_the_end_of_calibration():
    text = " ".join(lsl_node.build_parser().format_help().split())
    assert "stop after decoding this many seconds; with --calibrate counted from the end of calibration" in text
