"""The generic Redis source and sink: entry parsing, reconnection, stream resets, auth and TLS, the
plugin registration, and a decode loop Redis -> POSSM -> Redis."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from redis_helpers import RedisServer, free_port, redis_server, tls_redis_server  # noqa: F401  (fixtures)

from possm_plugin.adapters.redis_stream import (
    WATERMARK_SLACK,
    EntryParser,
    RedisConnection,
    RedisOptions,
    RedisSink,
    RedisSource,
    StreamReader,
    StreamWriter,
)
from possm_plugin.errors import ConfigError, StreamError
from possm_plugin.realtime.io import Prediction


def crossing(values, **extra) -> dict:
    return {"crossings": np.asarray(values, np.int16).tobytes(), **extra}


# -- parsing ---------------------------------------------------------------------------------------
def test_crossings_become_events_at_bin_centres():
    p = EntryParser(kind="crossings", n_channels=4)
    a = p.parse("1-0", crossing([0, 1, 0, 2]))
    assert a.t_start == 0.0 and a.watermark == pytest.approx(1e-3 + WATERMARK_SLACK)
    assert a.channels.tolist() == [1, 3, 3]
    np.testing.assert_allclose(a.times, [0.5e-3, 0.25e-3, 0.75e-3])
    b = p.parse("2-0", crossing([1, 0, 0, 0]))
    assert b.t_start == pytest.approx(1e-3) and b.channels.tolist() == [0]
    np.testing.assert_allclose(b.times, [1.5e-3])
    assert p.stats()["events"] == 4 and p.stats()["malformed_total"] == 0


def test_binned_counts_spread_evenly():
    p = EntryParser(kind="binned", n_channels=3, dtype="float32", bin_size_ms=20)
    e = p.parse("1-0", {"samples": np.array([0, 4, 1], np.float32).tobytes()})
    assert e.channels.tolist() == [1, 1, 1, 1, 2]
    np.testing.assert_allclose(e.times, [0.0025, 0.0075, 0.0125, 0.0175, 0.01])
    assert e.watermark == pytest.approx(0.02 + WATERMARK_SLACK)


@pytest.mark.parametrize(
    "flds, reason",
    [
        ({}, "missing_field"),
        (crossing([1, 0, 0]), "wrong_length"),
        ({"crossings": np.zeros(4, np.float32).tobytes()}, "wrong_dtype"),
        ({"crossings": b"\x00" * 7}, "wrong_length"),
        (crossing([0, -1, 0, 0]), "bad_values"),
    ],
)
def test_malformed_entries_are_counted_and_keep_the_clock(flds, reason):
    p = EntryParser(kind="crossings", n_channels=4)
    e = p.parse("1-0", flds)
    assert e.error == reason and len(e.times) == 0
    assert e.watermark == pytest.approx(1e-3 + WATERMARK_SLACK)  # an empty bin: the tick clock advances
    assert p.malformed == {reason: 1}
    assert p.parse("2-0", crossing([1, 0, 0, 0])).times[0] == pytest.approx(1.5e-3)


def test_float_counts_must_be_whole():
    p = EntryParser(kind="binned", n_channels=2, dtype="float32", bin_size_ms=10)
    assert p.parse("1-0", {"samples": np.array([0.5, 1], np.float32).tobytes()}).error == "bad_values"
    assert p.parse("2-0", {"samples": np.array([np.nan, 1], np.float32).tobytes()}).error == "bad_values"


def test_ts_and_timestamps_clocks():
    p = EntryParser(kind="crossings", n_channels=2, clock="ts")
    e = p.parse("1-0", crossing([1, 0], ts=np.uint64(5_000_000_000).tobytes()))
    assert e.t_start == pytest.approx(5.0 - 1e-3) and e.times[0] == pytest.approx(5.0 - 0.5e-3)
    assert p.parse("2-0", crossing([1, 0])).error == "bad_time"
    q = EntryParser(kind="crossings", n_channels=2, clock="timestamps", timestamps_rate=30000)
    top = 2**32 - 30
    assert q.parse("1-0", crossing([0, 0], timestamps=np.uint32(top).tobytes())).t_start == pytest.approx(top / 30000)
    wrapped = q.parse("2-0", crossing([0, 0], timestamps=np.uint32(0).tobytes()))  # the uint32 counter wrapped
    assert wrapped.t_start == pytest.approx(2**32 / 30000)


def test_parser_config_errors():
    with pytest.raises(ConfigError, match="bin_size_ms"):
        EntryParser(kind="binned", n_channels=2)
    with pytest.raises(ConfigError, match="input_dtype='complex64'"):
        EntryParser(n_channels=2, dtype="complex64")
    with pytest.raises(ConfigError, match="clock='wall'"):
        EntryParser(n_channels=2, clock="wall")


def test_source_options_from_strings():
    s = RedisSource(stream="x", n_channels="3", port="6390", ssl="false", kind="binned", bin_size_ms="10", dtype="int16")
    assert s.unit_ids == ["ch000", "ch001", "ch002"] and s.options.port == 6390 and s.parser.bin_s == pytest.approx(0.01)
    assert RedisSource(unit_ids="a,b").unit_ids == ["a", "b"]
    with pytest.raises(ConfigError, match="unknown option.*'chanels'"):
        RedisSource(chanels=3)
    with pytest.raises(ConfigError, match="give n_channels .* or unit_ids"):
        RedisSource()
    with pytest.raises(ConfigError, match="port='abc'"):
        RedisSource(n_channels=2, port="abc")
    with pytest.raises(ConfigError, match="unknown option"):
        RedisSink(fieldz="x")


def test_plugins_register_redis_source_and_sink():
    from possm_plugin.plugins import manager

    manager.reset_plugin_manager()
    try:
        assert manager.get_source("redis") is RedisSource
        assert manager.get_sink("redis") is RedisSink
        src = manager.get_source("redis")(stream="thresh_cross", n_channels="4")
        assert isinstance(src, RedisSource)
    finally:
        manager.reset_plugin_manager()


# -- against a server --------------------------------------------------------------------------------
def test_source_reads_new_entries_in_order(redis_server):
    c = redis_server.client()
    c.xadd("cr", crossing([1, 1]))  # before connect: not read ('$')
    with RedisSource(stream="cr", n_channels=2, port=redis_server.port) as src:
        assert src.acquire(timeout=0.05).watermark is None
        for n in range(5):
            c.xadd("cr", crossing([n % 2, 1]))
        c.xadd("cr", {"crossings": b"garbage"})
        got = []
        wm = None
        deadline = time.monotonic() + 5
        while len(got) < 6 and time.monotonic() < deadline:
            b = src.acquire(timeout=0.05)
            got += src.last_entries
            if b.watermark is not None:
                wm = b.watermark
            if src.last_entries:
                assert b.start == pytest.approx(src.last_entries[0].t_start)
        assert [e.index for e in got] == list(range(6))
        assert wm == pytest.approx(6e-3 + WATERMARK_SLACK)
        assert src.stats()["malformed"] == {"wrong_length": 1} and src.stats()["events"] == 7


def test_reader_resumes_after_restart_and_detects_reset(tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        conn = RedisConnection(RedisOptions(port=server.port, backoff_max=0.1))
        reader = StreamReader(conn, "s", start="0")
        c = server.client()
        for k in range(3):
            c.xadd("s", {"k": k}, id=f"{1000 + k}-0")
        assert [f[b"k"] for _, f in reader.read(50)] == [b"0", b"1", b"2"]
        server.restart()
        assert reader.read(50) == []  # the first read after the restart fails and backs off
        c = server.client()
        c.xadd("s", {"k": "new0"}, id="5-0")  # explicit ids went backwards: a reset stream
        c.xadd("s", {"k": "new1"}, id="6-0")
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += reader.read(50)
        assert [f[b"k"] for _, f in got] == [b"new0", b"new1"]
        assert reader.stream_resets == 1 and conn.reconnects >= 1
        # auto ids after a restart are newer than the old ones: no reset, nothing skipped
        server.restart()
        c = server.client()
        c.xadd("s", {"k": "auto"})
        got = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got += reader.read(50)
        assert [f[b"k"] for _, f in got] == [b"auto"] and reader.stream_resets == 1
        conn.close()
    finally:
        server.stop()


def test_writer_queues_while_down_and_flushes_after(tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        conn = RedisConnection(RedisOptions(port=server.port, backoff_max=0.1))
        w = StreamWriter(conn, "out", max_pending=3)
        w.add({"v": 0})
        assert w.flush()
        server.stop()
        for v in range(1, 6):
            w.add({"v": v})
        assert not w.flush() and len(w.pending) == 3 and w.dropped == 2  # the oldest beyond max_pending
        server.start()
        assert w.flush() and not w.pending
        assert [f[b"v"] for _, f in server.client().xrange("out")] == [b"3", b"4", b"5"]
        conn.close()
    finally:
        server.stop()


def test_password_and_acl_user(tmp_path, monkeypatch):
    server = RedisServer(tmp_path, password="s3cret").start()
    try:
        with pytest.raises(StreamError, match="credentials|password"):
            RedisSource(stream="x", n_channels=1, port=server.port).connect(timeout=1)
        monkeypatch.setenv("POSSM_REDIS_PASSWORD", "s3cret")
        with RedisSource(stream="x", n_channels=1, port=server.port) as src:
            server.client().xadd("x", crossing([1]))
            assert wait_batch(src).channels.tolist() == [0]
    finally:
        server.stop()
    monkeypatch.delenv("POSSM_REDIS_PASSWORD")
    acl = RedisServer(tmp_path, username="decoder", password="pw",
                      extra=["--user", "decoder", "on", ">pw", "~*", "&*", "+@all", "--user", "default", "off"]).start()
    try:
        with pytest.raises(StreamError, match="credentials"):
            RedisSource(stream="x", n_channels=1, port=acl.port, username="decoder", password="wrong").connect(timeout=1)
        with RedisSource(stream="x", n_channels=1, port=acl.port, username="decoder", password="pw") as src:
            acl.client().xadd("x", crossing([2]))
            assert wait_batch(src).channels.tolist() == [0, 0]
    finally:
        acl.stop()


def test_tls(tls_redis_server):
    server = tls_redis_server
    with RedisSource(stream="x", n_channels=1, port=server.port, ssl="true", ssl_ca_certs=server.tls["ca"]) as src:
        server.client().xadd("x", crossing([1]))
        assert wait_batch(src).channels.tolist() == [0]
    with pytest.raises(StreamError, match="cannot reach"):  # without TLS the server does not answer
        RedisSource(stream="x", n_channels=1, port=server.port, connect_timeout="0.3").connect(timeout=0.5)


def wait_batch(src, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = src.acquire(timeout=0.05)
        if len(b):
            return b
    raise AssertionError("no events")


def test_sink_writes_brand_layout(redis_server):
    sink = RedisSink(stream="pred", port=str(redis_server.port), maxlen="100")
    sink.connect(output_names=["vx", "vy"], chunk_step=0.05)
    sink.publish([
        Prediction(values=np.array([1.5, -2.0], np.float32), t_start=0.0, t_end=0.05, chunk_index=0, extra={"sync": json.dumps({"a": 1})}),
        Prediction(values=np.array([0.5, 0.25], np.float32), t_start=0.05, t_end=0.1, chunk_index=1),
    ])
    sink.disconnect()
    out = [f for _, f in redis_server.client().xrange("pred")]
    assert len(out) == 2
    np.testing.assert_array_equal(np.frombuffer(out[0][b"samples"], np.float32), [1.5, -2.0])
    assert np.frombuffer(out[1][b"i"], np.uint64)[0] == 1
    assert np.frombuffer(out[1][b"t_end"], np.float64)[0] == pytest.approx(0.1)
    assert json.loads(out[0][b"sync"]) == {"a": 1} and b"sync" not in out[1]
    assert np.frombuffer(out[0][b"ts"], np.uint64)[0] <= np.frombuffer(out[1][b"ts"], np.uint64)[0]


def test_decode_loop_redis_to_redis_equals_offline(redis_server, tiny_checkpoint):
    """The generic path possm-lsl uses: RedisSource -> DecoderRunner -> RedisSink."""
    from possm_plugin.realtime.runner import DecoderRunner
    from possm_plugin.realtime.streaming import StreamingDecoder

    n_units, n_chunks = 16, 6
    dec = StreamingDecoder.from_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(2)
    x = (rng.random((n_chunks * 50, n_units)) < 0.04).astype(np.int16)
    c = redis_server.client()
    src = RedisSource(stream="cr", unit_ids=",".join(dec.unit_ids), port=redis_server.port)
    sink = RedisSink(stream="pred", port=redis_server.port)
    src.connect()
    stop = threading.Event()
    runner = DecoderRunner(src, dec, [sink], stop_event=stop, poll_timeout=0.02)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        p = c.pipeline(transaction=False)
        for row in x:
            p.xadd("cr", crossing(row))
        p.execute()
        deadline = time.monotonic() + 20
        while c.xlen("pred") < n_chunks and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        t.join(timeout=10)
        src.disconnect()
    out = [np.frombuffer(f[b"samples"], np.float32) for _, f in c.xrange("pred")]
    assert len(out) == n_chunks
    n, u = np.nonzero(x)
    ref = StreamingDecoder.from_checkpoint(tiny_checkpoint)
    want = ref.decode_offline(u, n * 1e-3 + 0.5e-3, t0=0.0, n_chunks=n_chunks)
    np.testing.assert_allclose(np.stack(out), want, rtol=1e-5, atol=1e-5)


def test_possm_lsl_redis_to_redis_passes_sync_through(redis_server, tiny_checkpoint):
    """``possm-lsl --source redis --sink redis`` (a separate process): each output entry carries the ``sync``,
    ``i``, id and ``ts`` of the input entry that completed its chunk, as ``possm-brand`` writes them."""
    import os
    import subprocess
    import sys

    from possm_plugin.realtime.streaming import StreamingDecoder

    n_units, n_chunks = 16, 4
    units = StreamingDecoder.from_checkpoint(tiny_checkpoint).unit_ids
    x = (np.random.default_rng(5).random((n_chunks * 50, n_units)) < 0.04).astype(np.int16)
    c = redis_server.client()
    ids = [c.xadd("cr", crossing(row, sync=json.dumps({"nsp_idx_1": 1000 + n}), i=np.uint64(n).tobytes(),
                                 ts=np.uint64(10**9 + n).tobytes())) for n, row in enumerate(x)]
    cmd = [sys.executable, "-c", "import sys; from possm_plugin.cli.lsl_node import main; sys.exit(main())",
           "--checkpoint", str(tiny_checkpoint), "--source", "redis", "--sink", "redis", "--prewarm", "0",
           "--source-opt", "stream=cr", "--source-opt", f"unit_ids={','.join(units)}", "--source-opt", "start=0",
           "--source-opt", f"port={redis_server.port}", "--sink-opt", "stream=pred", "--sink-opt", f"port={redis_server.port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while c.xlen("pred") < n_chunks and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    out = c.xrange("pred")
    assert len(out) == n_chunks, err.decode()[-2000:]
    for k, (_, f) in enumerate(out):
        last = (k + 1) * 50 - 1  # the entry that completed chunk k
        assert json.loads(f[b"sync"]) == {"nsp_idx_1": 1000 + last}
        assert np.frombuffer(f[b"i_in"], np.uint64)[0] == last
        assert f[b"id_in"] == ids[last]
        assert np.frombuffer(f[b"ts_in"], np.uint64)[0] == 10**9 + last
        assert np.frombuffer(f[b"i"], np.uint64)[0] == k


def test_unreachable_server_fails_fast_at_connect():
    with pytest.raises(StreamError, match="cannot reach Redis"):
        RedisSource(stream="x", n_channels=1, port=free_port()).connect(timeout=0.2)
