"""Safety: nothing the package loads can run code, the Redis adapters honour credentials and TLS, and
no secret reaches a log line or a stream.

- the source of the package (possm_plugin/ and adapters/) is parsed and every call that can unpickle
  or execute is flagged (pickle/dill/joblib/marshal/shelve, torch.load without weights_only=True,
  yaml.load without a safe loader, allow_pickle=True, eval/exec);
- untrusted checkpoints, optimizer states, session files and configs that carry code (YAML python
  tags, pickles disguised as .safetensors / .npz, a torch .pt file) are refused with the package's
  error, and the code never runs -- through the Python API, ``possm info``, ``possm-lsl`` and the BRAND node;
- a password (``requirepass``) and an ACL user are used by the Redis sink and the BRAND node (wrong
  credentials: one clear StreamError); TLS options reach redis-py's connection, and a real TLS
  server is used when this redis-server can serve TLS;
- the password appears in no log record (DEBUG), no repr, no exception and no stream entry.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_tiny_model
from redis_helpers import RedisServer, redis_server, tls_redis_server  # noqa: F401  (fixtures)
from reliability_helpers import make_crossings, publish_supergraph, push_crossings, wait_for

from possm_plugin.adapters.brand import BrandNode
from possm_plugin.adapters.redis_stream import PASSWORD_ENV, RedisOptions, RedisSink
from possm_plugin.errors import CheckpointError, ConfigError, DataError, StreamError
from possm_plugin.model.checkpoint import load_checkpoint, save_checkpoint
from possm_plugin.realtime.io import Prediction

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = [ROOT / "possm_plugin", ROOT / "adapters"]

# == no unpickling or code execution in the package's source =============================================
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _name(node: ast.AST) -> str:
    """Dotted name of a call target (``torch.load``, ``yaml.load``, ``np.load``, ``eval``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value) or '?'}.{node.attr}"  # '?': a method of some expression, e.g. model.to(d).eval()
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every construct in ``source`` that can unpickle or execute data, as 'file:line: what'."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}: import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in UNSAFE_MODULES:
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            head, _, last = name.rpartition(".")
            if name in ("eval", "exec", "compile", "__import__"):
                found.append(f"{where}: {name}()")
            elif head.split(".")[0] in UNSAFE_MODULES:
                found.append(f"{where}: {name}()")
            elif name in ("torch.load", "torch.jit.load") or (last == "load" and head == "torch"):
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    found.append(f"{where}: {name}() without weights_only=True")
            elif head == "yaml" and last in ("unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
                found.append(f"{where}: {name}()")
            elif head == "yaml" and last in ("load", "load_all"):
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if _name(loader).rpartition(".")[2] not in SAFE_YAML_LOADERS:
                    found.append(f"{where}: {name}() without a safe loader")
            elif last in ("read_pickle", "from_pickle"):
                found.append(f"{where}: {name}()")
            ap = _kw(node, "allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(f"{where}: {name}(allow_pickle=...) not False")
    return found


def test_the_scanner_catches_what_it_must():
    bad = """
import pickle
from dill import loads
import torch, yaml, numpy as np
torch.load(f)
torch.load(f, weights_only=False)
yaml.load(s)
yaml.load(s, Loader=yaml.Loader)
yaml.unsafe_load(s)
np.load(p, allow_pickle=True)
eval(text)
"""
    good = """
torch.load(f, weights_only=True)
yaml.safe_load(s)
yaml.load(s, Loader=yaml.SafeLoader)
np.load(p, allow_pickle=False)
np.load(p)
model.eval()
model.to(d).eval()
"""
    assert len(unsafe_calls(bad)) == 9
    assert unsafe_calls(good) == []


def test_no_unpickling_or_code_execution_in_the_package():
    files = sorted(f for d in PACKAGE_DIRS for f in d.rglob("*.py"))
    assert len(files) > 30  # the whole package was scanned
    found = [hit for f in files for hit in unsafe_calls(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == [], "\n".join(found)


def test_no_allow_pickle_true_anywhere_in_the_text():
    """The grep-style twin of the AST scan (catches e.g. a string passed through **kwargs)."""
    hits = [f"{f.relative_to(ROOT)}:{i}" for d in PACKAGE_DIRS for f in d.rglob("*.py")
            for i, line in enumerate(f.read_text().splitlines(), 1)
            if "allow_pickle=True" in line.replace(" ", "") or "weights_only=False" in line.replace(" ", "")]
    assert hits == []


# == untrusted files cannot run code ========================================================================
class _Payload:
    """Unpickling this creates ``marker`` (what an attacker's file would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weights": _Payload(marker)})


def _torch_file(marker: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"state_dict": {}, "x": _Payload(marker)}, buf)
    return buf.getvalue()


YAML_PAYLOADS = [
    "!!python/object/apply:pathlib.Path.touch [['{m}']]",
    "format: possm-plugin\nformat_version: 1\nmodel: !!python/object/apply:pathlib.Path.touch [['{m}']]\n",
    "format: possm-plugin\nmeta: !!python/object/new:pathlib.PosixPath {{state: {m}}}\n",
    "format: possm-plugin\nx: !!python/name:os.system\n",
    "format: possm-plugin\nx: !!python/module:os\n",
]


@pytest.mark.parametrize("payload", YAML_PAYLOADS)
def test_checkpoint_yaml_with_python_tags_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = save_checkpoint(make_tiny_model(n_units=4), tmp_path / "ck")
    path.write_text(payload.format(m=marker))
    with pytest.raises(CheckpointError, match="ck.yaml"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_pickled_weights_are_refused_even_with_a_matching_hash(tmp_path, kind):
    """An attacker controls both files: a pickle (or a torch .pt file) saved as .safetensors, its sha256
    written into the YAML. Loading refuses it (safetensors only) and nothing is unpickled."""
    marker = tmp_path / "pwned"
    path = save_checkpoint(make_tiny_model(n_units=4), tmp_path / "ck")
    data = _evil_pickle(marker) if kind == "pickle" else _torch_file(marker)
    path.with_suffix(".safetensors").write_bytes(data)
    doc = yaml.safe_load(path.read_text())
    doc["weights_sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_torch_pt_file_is_not_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    pt = tmp_path / "model.pt"
    pt.write_bytes(_torch_file(marker))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(pt)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)  # a directory holding only the .pt file
    assert not marker.exists()


def test_evil_checkpoint_through_the_cli_and_the_decoder_entry_points(tmp_path, capsys):
    from possm_plugin.cli import lsl_node
    from possm_plugin.cli.main import main as possm_main
    from possm_plugin.realtime.streaming import StreamingDecoder

    marker = tmp_path / "pwned"
    path = save_checkpoint(make_tiny_model(n_units=4), tmp_path / "ck")
    path.write_text(YAML_PAYLOADS[1].format(m=marker))
    with pytest.raises(CheckpointError):
        StreamingDecoder.from_checkpoint(path)
    assert possm_main(["info", str(path), "--json"]) == 1
    args = lsl_node.build_parser().parse_args(["--inlet", "never-resolved", "--checkpoint", str(path)])
    with pytest.raises(CheckpointError):
        lsl_node.run(args)  # the checkpoint is loaded (and refused) before any stream is resolved
    err = capsys.readouterr().err
    assert "possm info: error:" in err and "Traceback" not in err
    assert not marker.exists()


def test_evil_checkpoint_named_in_a_brand_graph(redis_server, tmp_path):
    from possm_plugin.adapters.brand import main as brand_main

    marker = tmp_path / "pwned"
    path = save_checkpoint(make_tiny_model(n_units=4), tmp_path / "ck")
    path.write_text(YAML_PAYLOADS[1].format(m=marker))
    c = redis_server.client()
    publish_supergraph(c, "possm", {"input_stream": "x", "checkpoint": str(path)})
    assert brand_main(["-n", "possm", "-p", str(redis_server.port)]) == 1
    last = c.xrevrange("possm_state", count=1)[0][1]
    assert last[b"status"] == b"error" and b"ck.yaml" in last[b"message"]
    assert not marker.exists()


def test_pickled_optimizer_state_is_refused(tmp_path):
    import torch

    from possm_plugin.training.optim import load_optimizer_state as _load_optim

    marker = tmp_path / "pwned"
    f = tmp_path / "last.optim.safetensors"
    f.write_bytes(_evil_pickle(marker))
    opt = torch.optim.AdamW(make_tiny_model(n_units=4).parameters())
    with pytest.raises(CheckpointError, match="unreadable"):
        _load_optim(opt, f)
    assert not marker.exists()


def test_session_file_with_a_pickled_object_array_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(marker)
    buf = io.BytesIO()
    np.savez(buf, session_id=np.str_("s"), spike_times=arr, spike_units=np.zeros(1, np.int32), unit_ids=np.array(["s/u"]),
             target_times=np.zeros(1), targets=np.zeros((1, 2)), trials=np.zeros((1, 2)))
    (tmp_path / "s.npz").write_bytes(buf.getvalue())
    from possm_plugin.data.session import Session

    with pytest.raises(DataError, match="s.npz"):
        Session.load(tmp_path / "s.npz")
    assert not marker.exists()


def test_training_config_with_python_tags_is_refused(tmp_path):
    from possm_plugin.training.train import load_train_config

    marker = tmp_path / "pwned"
    p = tmp_path / "c.yaml"
    p.write_text(f"model: !!python/object/apply:pathlib.Path.touch [['{marker}']]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(p)
    assert not marker.exists()


# == Redis credentials and TLS ==============================================================================
PASSWORD = "s3cret-Pw-0b5e"


class _Records(logging.Handler):
    """Every record of every logger, formatted, at DEBUG (args included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + (repr(record.args) if record.args else ""))


@pytest.fixture
def all_logs():
    root = logging.getLogger()
    h = _Records()
    old = root.level
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    try:
        yield h
    finally:
        root.removeHandler(h)
        root.setLevel(old)


def _acl_server(tmp_path: Path) -> RedisServer:
    # the decoder's user may only touch its own keys (and read the graph), as a BRAND deployment would
    return RedisServer(tmp_path, username="decoder", password=PASSWORD, extra=[
        "--user", "decoder", "on", f">{PASSWORD}", "~possm*", "~thresh*", "~supergraph_stream", "&*", "+@all",
        "--user", "default", "off",
    ]).start()


def test_sink_and_node_honour_requirepass_and_never_leak_it(tmp_path, monkeypatch, all_logs, tiny_checkpoint):
    server = RedisServer(tmp_path, password=PASSWORD).start()
    errors = []
    try:
        with pytest.raises(StreamError, match="password|credentials") as e:  # no password: one clear error
            RedisSink(stream="possm_out", port=server.port, connect_timeout=0.5).connect(output_names=["vx"], chunk_step=0.05)
        errors.append(str(e.value))
        with pytest.raises(StreamError, match="credentials") as e:  # a wrong one
            RedisSink(stream="possm_out", port=server.port, password="wrong").connect(output_names=["vx"], chunk_step=0.05)
        errors.append(str(e.value))
        sink = RedisSink(stream="possm_out", port=server.port, password=PASSWORD)
        sink.connect(output_names=["vx"], chunk_step=0.05)
        sink.publish([Prediction(values=np.ones(1, np.float32), t_start=0.0, t_end=0.05, chunk_index=0)])
        errors.append(repr(sink.options) + sink.options.describe())
        sink.disconnect()
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD)  # the documented way: off the command line
        sink = RedisSink(stream="possm_out", port=server.port)
        sink.connect(output_names=["vx"], chunk_step=0.05)
        sink.publish([Prediction(values=np.ones(1, np.float32), t_start=0.05, t_end=0.1, chunk_index=1)])
        sink.disconnect()
        c = server.client()
        assert c.xlen("possm_out") == 2
        # the BRAND node with the password from the environment, through a server restart
        publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": 16, "checkpoint": str(tiny_checkpoint)})
        stop = threading.Event()
        node = BrandNode("possm", RedisOptions(port=server.port, backoff_max=0.1), stop=stop)
        node.connect(5)
        node.setup(node.load_parameters())
        th = threading.Thread(target=node.run, kwargs={"block_ms": 20}, daemon=True)
        th.start()
        assert wait_for(lambda: node.reader.last_id is not None, 10)
        push_crossings(c, "thresh_cross", make_crossings(100))
        c.xadd("thresh_cross", {"crossings": b"garbage"})  # a logged warning
        assert wait_for(lambda: c.xlen("possm") >= 2, 20)
        c.close()
        server.restart(down_for=0.2)  # reconnection warnings
        c = server.client()
        push_crossings(c, "thresh_cross", make_crossings(100, seed=1))
        assert wait_for(lambda: c.xlen("possm") >= 2, 20)
        stop.set()
        th.join(15)
        node.close()
        entries = [v for key in c.keys() if c.type(key) == b"stream" for _, f in c.xrange(key) for v in [*f, *f.values()]]
    finally:
        server.stop()
    assert not th.is_alive() and node.conn.reconnects >= 1
    text = "\n".join(all_logs.lines + errors)
    assert "reconnected" in text and "malformed" in text  # the logs were captured
    assert PASSWORD not in text
    assert not any(PASSWORD.encode() in v for v in entries if isinstance(v, bytes))


def test_sink_and_node_honour_an_acl_user(tmp_path, all_logs, tiny_checkpoint):
    server = _acl_server(tmp_path)
    try:
        with pytest.raises(StreamError, match="credentials"):
            RedisSink(stream="possm_out", port=server.port, username="decoder", password="wrong").connect(output_names=["vx"], chunk_step=0.05)
        with pytest.raises(StreamError, match="credentials|password"):  # the default user is off
            RedisSink(stream="possm_out", port=server.port, password=PASSWORD).connect(output_names=["vx"], chunk_step=0.05)
        c = server.client()
        publish_supergraph(c, "possm", {"input_stream": "thresh_cross", "n_channels": 16, "checkpoint": str(tiny_checkpoint)})
        stop = threading.Event()
        node = BrandNode("possm", RedisOptions(port=server.port, username="decoder", password=PASSWORD), stop=stop)
        node.connect(5)
        node.setup(node.load_parameters())
        th = threading.Thread(target=node.run, kwargs={"block_ms": 20}, daemon=True)
        th.start()
        assert wait_for(lambda: node.reader.last_id is not None, 10)
        push_crossings(c, "thresh_cross", make_crossings(150))
        assert wait_for(lambda: c.xlen("possm") >= 3, 20)
        stop.set()
        th.join(15)
        node.close()
        states = [f[b"status"] for _, f in c.xrange("possm_state")]
    finally:
        server.stop()
    assert states[:2] == [b"initialized", b"running"]
    assert PASSWORD not in "\n".join(all_logs.lines)


def test_brand_cli_tls_options_reach_redis_py(monkeypatch):
    """possm-brand --tls ...: the options land in redis-py's connection (checked without a server)."""
    import redis

    from possm_plugin.adapters import brand

    seen = {}

    def fake_connect(self, timeout=10.0):
        pool = self.conn.client.connection_pool
        seen.update(pool.connection_kwargs, cls=pool.connection_class, options=self.conn.options)
        raise StreamError("stop here")

    monkeypatch.setattr(brand.BrandNode, "connect", fake_connect)
    rc = brand.main(["-n", "possm", "-i", "redis.example", "-p", "6380", "--username", "decoder", "--password", PASSWORD,
                     "--tls", "--tls-ca-cert", "/ca.crt", "--tls-cert", "/client.crt", "--tls-key", "/client.key"])
    assert rc == 1
    assert seen["cls"] is redis.connection.SSLConnection
    assert (seen["host"], seen["port"], seen["username"], seen["password"]) == ("redis.example", 6380, "decoder", PASSWORD)
    assert (seen["ssl_ca_certs"], seen["ssl_certfile"], seen["ssl_keyfile"]) == ("/ca.crt", "/client.crt", "/client.key")
    assert PASSWORD not in repr(seen["options"])


def test_tls_for_real_when_this_redis_server_serves_it(tls_redis_server, tiny_checkpoint):
    server = tls_redis_server
    opts = {"port": server.port, "ssl": True, "ssl_ca_certs": server.tls["ca"]}
    sink = RedisSink(stream="possm_out", **opts)
    sink.connect(output_names=["vx"], chunk_step=0.05)
    sink.publish([Prediction(values=np.ones(1, np.float32), t_start=0.0, t_end=0.05, chunk_index=0)])
    sink.disconnect()
    node = BrandNode("possm", RedisOptions(**opts))
    node.connect(5)
    node.close()
    c = server.client()
    assert c.xlen("possm_out") == 1 and c.xrange("possm_state")[0][1][b"status"] == b"initialized"
    plain = BrandNode("possm", RedisOptions(port=server.port, connect_timeout=0.3, socket_timeout=0.3))
    try:
        with pytest.raises(StreamError, match="cannot reach"):  # plain TCP gets nothing from a TLS port
            plain.connect(0.5)
    finally:
        plain.close()


def test_state_and_stats_hold_no_credentials():
    opts = RedisOptions(username="decoder", password=PASSWORD)
    assert PASSWORD not in repr(opts) and PASSWORD not in opts.describe()
    node = BrandNode("possm", opts)
    assert PASSWORD not in json.dumps(node.stats())
    node.close()
