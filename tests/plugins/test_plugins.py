"""The plugin machinery: entry-point discovery, a real third-party distribution (tests/plugin_pkg)
installed into a temporary directory, broken plugins, POSSM_PLUGINS, `possm plugins`, the POSSM
decoder node and the host example that knows nothing of POSSM."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from possm_plugin.cli.main import main
from possm_plugin.errors import ConfigError, DataError, PluginError, PossmError
from possm_plugin.model.backbones import available_backbones, get_backbone
from possm_plugin.model.backbones import base as backbone_base
from possm_plugin.model.checkpoint import load_checkpoint, save_checkpoint
from possm_plugin.model.config import ModelConfig
from possm_plugin.model.possm import POSSM
from possm_plugin.plugins import (
    ENTRY_POINT_GROUP,
    get_decoder_node,
    get_plugin_manager,
    get_source,
    get_sources,
    hookimpl,
    list_failures,
    list_plugins,
    list_skipped,
    reset_plugin_manager,
)
from possm_plugin.plugins.decoder_node import PossmDecoderNode, binned_to_events
from possm_plugin.realtime.streaming import StreamingDecoder

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_PKG = ROOT / "tests" / "plugin_pkg"
HOST = ROOT / "examples" / "host" / "host.py"
VERSION = importlib.metadata.version("possm-plugin")
BROKEN = {"broken_import_test", "broken_hook_test", "typo_hook_test"}


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """tests/plugin_pkg installed (offline, no dependencies) into a temporary --target directory."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(PLUGIN_PKG, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"could not install tests/plugin_pkg:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "possm_test_plugin").is_dir()
    return site


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch):
    """A fresh plugin manager per test, no restriction, and the backbone registry restored after."""
    monkeypatch.delenv("POSSM_PLUGINS", raising=False)
    monkeypatch.setattr(backbone_base, "_REGISTRY", dict(backbone_base._REGISTRY))
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def with_test_plugin(plugin_site, monkeypatch):
    """The test distribution visible to importlib.metadata in this process."""
    monkeypatch.syspath_prepend(str(plugin_site))
    yield plugin_site
    for name in [m for m in sys.modules if m == "possm_test_plugin" or m.startswith("possm_test_plugin.")]:
        del sys.modules[name]


def _run(args: list[str], *, site: Path | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("POSSM_PLUGINS", None)
    e["OMP_NUM_THREADS"] = "1"
    if site is not None:
        e["PYTHONPATH"] = os.pathsep.join([str(site), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(env or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


def _possm_plugins_json(**kw) -> dict:
    proc = _run(["-m", "possm_plugin.cli.main", "--log-level", "ERROR", "plugins", "--json"], **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _rows(doc: dict) -> set[tuple]:
    return {(r["hook"], r["name"], r["plugin"], r["distribution"]) for r in doc["plugins"]}


# -- built-ins ---------------------------------------------------------------------------------------
def test_builtins_register_through_entry_points():
    rows = list_plugins()
    got = {(r.hook, r.name): r for r in rows}
    for name in ("gru", "s4d", "mamba"):
        r = got[("backbones", name)]
        assert (r.plugin, r.distribution, r.version) == ("backbones", "possm-plugin", VERSION)
    node = got[("decoder_nodes", "possm")]
    assert (node.plugin, node.distribution) == ("decoder", "possm-plugin")
    assert get_decoder_node("possm") is PossmDecoderNode
    # every entry point this distribution declares is either loaded or reported, never silently lost
    pm = get_plugin_manager()
    failed = {f.plugin for f in list_failures()}
    for ep in importlib.metadata.distribution("possm-plugin").entry_points:
        if ep.group == ENTRY_POINT_GROUP:
            assert pm.get_plugin(ep.name) is not None or ep.name in failed, ep.name


def test_manager_is_created_once_and_reset_gives_a_new_one():
    pm = get_plugin_manager()
    assert get_plugin_manager() is pm
    assert pm.project_name == "possm_plugin"
    n = len(pm.get_plugins())
    get_sources(), list_plugins()
    assert len(pm.get_plugins()) == n  # nothing loaded twice
    reset_plugin_manager()
    assert get_plugin_manager() is not pm


def test_unknown_source_lists_available_names():
    with pytest.raises(PluginError, match=r"no source named 'nope'; available: \["):
        get_source("nope")


def test_name_clash_names_both_plugins(monkeypatch):
    monkeypatch.setenv("POSSM_PLUGINS", "none")
    pm = get_plugin_manager()

    class A:
        @hookimpl
        def possm_register_sources(self, register):
            register("dup", dict)

    class B:
        @hookimpl
        def possm_register_sources(self, register):
            register("dup", list)

    pm.register(A(), name="plugin_a")
    pm.register(B(), name="plugin_b")
    with pytest.raises(PluginError, match=r"source 'dup' is registered by plugin 'plugin_a'.*and by plugin 'plugin_b'"):
        get_sources()
    # `possm plugins` still lists, and reports the clash as a failure
    rows = list_plugins()
    assert [(r.name, r.plugin) for r in rows if r.hook == "sources"] == [("dup", "plugin_a")]
    assert any("plugin_a" in f.error and "plugin_b" in f.error for f in list_failures())


def test_restriction_none_loads_nothing_but_builtin_backbones_still_work(monkeypatch):
    monkeypatch.setenv("POSSM_PLUGINS", "none")
    assert list_plugins() == []
    assert {s.plugin for s in list_skipped()} >= {"backbones", "decoder"}
    assert get_backbone("gru").__name__ == "GRUBackbone"  # built-ins are imported directly too
    with pytest.raises(PluginError, match="no decoder node named 'possm'; available: \\[\\]"):
        get_decoder_node("possm")


# -- the third-party distribution -------------------------------------------------------------------
def test_cli_lists_builtins_test_plugin_and_failures(plugin_site):
    doc = _possm_plugins_json(site=plugin_site)
    rows = _rows(doc)
    for name in ("gru", "s4d", "mamba"):
        assert ("backbones", name, "backbones", "possm-plugin") in rows
    assert ("decoder_nodes", "possm", "decoder", "possm-plugin") in rows
    assert ("backbones", "lstm-test", "test_plugin", "possm-test-plugin") in rows
    assert ("sources", "constant-test", "test_plugin", "possm-test-plugin") in rows
    versions = {r["distribution"]: r["version"] for r in doc["plugins"]}
    assert versions == {**versions, "possm-plugin": VERSION, "possm-test-plugin": "0.0.1"}
    failures = {f["plugin"]: f for f in doc["failures"]}
    assert BROKEN <= set(failures)
    assert "broken_import fails on import on purpose" in failures["broken_import_test"]["error"]
    assert failures["broken_import_test"]["distribution"] == "possm-test-plugin"
    assert "raises in possm_register_sinks" in failures["broken_hook_test"]["error"]
    assert "unknown hook 'possm_register_source'" in failures["typo_hook_test"]["error"]


def test_cli_table_and_strict(with_test_plugin, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "lstm-test" in out and "possm-test-plugin" in out
    assert "failed (skipped):" in out and "broken_import_test" in out
    reset_plugin_manager()
    assert main(["plugins", "--strict"]) == 1


def test_cli_restricted_to_the_test_plugin(plugin_site, with_test_plugin, monkeypatch, capsys):
    doc = _possm_plugins_json(site=plugin_site, env={"POSSM_PLUGINS": "test_plugin"})
    assert {r["plugin"] for r in doc["plugins"]} == {"test_plugin"}
    assert doc["failures"] == []
    assert {"backbones", "decoder"} | BROKEN <= {s["plugin"] for s in doc["skipped"]}
    monkeypatch.setenv("POSSM_PLUGINS", "builtin")
    reset_plugin_manager()
    assert main(["plugins", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["distribution"] for r in doc["plugins"]} == {"possm-plugin"}
    assert "test_plugin" in {s["plugin"] for s in doc["skipped"]}
    assert doc["restriction"] == "builtin"


def test_broken_plugins_are_reported_and_skipped(with_test_plugin):
    factory = get_source("constant-test")  # the working plugin of the same distribution is unaffected
    assert factory.__name__ == "ConstantSource"
    failures = {f.plugin: f for f in list_failures()}
    assert BROKEN <= set(failures)
    assert failures["broken_import_test"].target == "possm_test_plugin.broken_import"
    assert failures["broken_import_test"].error.startswith("RuntimeError:")
    assert get_plugin_manager().get_plugin("typo_hook_test") is None  # check_pending() removed it


def test_plugin_source_works(with_test_plugin):
    src = get_source("constant-test")(n_channels="3", rate="40", step="0.05", duration="0.1")
    with src:
        assert src.unit_ids == ["const/u000", "const/u001", "const/u002"]
        b1, b2, b3 = src.acquire(), src.acquire(), src.acquire()
    assert not src.connected
    np.testing.assert_allclose(b1.times, np.repeat([0.0, 0.025], 3))
    np.testing.assert_array_equal(b1.channels, [0, 1, 2, 0, 1, 2])
    assert (b1.watermark, b2.watermark, b3.watermark) == (0.05, 0.1, 0.1)
    assert len(b3) == 0


def test_model_with_plugin_backbone_runs_and_round_trips(with_test_plugin, tmp_path):
    assert "lstm-test" in available_backbones()
    units = [f"s/u{i}" for i in range(6)]
    cfg = ModelConfig(dim=32, dim_head=32, ffn_dropout=0.0, backbone="lstm-test", backbone_kwargs={"hidden": 24})
    torch.manual_seed(0)
    model = POSSM(cfg, unit_ids=units, session_ids=["s"], session_units={"s": units}).eval()
    assert type(model.backbone).__name__ == "LSTMBackbone"
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 1.0, 120))
    chans = rng.integers(0, 6, 120)
    dec = StreamingDecoder(model, t0=0.0)
    dec.push(chans, times)
    preds = dec.advance(1.0)
    assert len(preds) == 20
    offline = dec.decode_offline(chans, times, t0=0.0, n_chunks=20)
    np.testing.assert_allclose(np.stack([p.values for p in preds]), offline, rtol=1e-4, atol=1e-5)
    path = save_checkpoint(model, tmp_path / "lstm")
    loaded, doc = load_checkpoint(path)
    assert doc["model"]["backbone"] == "lstm-test"
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


# -- the decoder node ---------------------------------------------------------------------------------
# chunks of 1/16 s and bins of 1/64 s: every time below is exact in binary, so grid edges match exactly
CHUNK, BIN = 0.0625, 0.015625


@pytest.fixture
def node_model():
    return make_tiny_model("gru", n_units=8, chunk_width=CHUNK, chunk_step=CHUNK)


def test_binned_to_events_spreads_counts_evenly():
    ch, t, bad = binned_to_events(np.array([[2, 0], [0, 1]]), np.array([0.0, 0.01]), 0.01)
    np.testing.assert_array_equal(ch, [0, 0, 1])
    np.testing.assert_allclose(t, [0.0025, 0.0075, 0.015])
    assert bad == 0
    # the one policy (possm_plugin.realtime.binned_events): NaN, negative, non-whole (a rate) and absurd counts are
    # dropped and counted; a count within 1e-3 of a whole number (float32 transport) is that number
    ch, t, bad = binned_to_events(np.array([[np.nan, -1.0, 1.2, 1.0004, 5000.0]]), np.array([1.0]), 0.02)
    np.testing.assert_array_equal(ch, [3])
    np.testing.assert_allclose(t, [1.01])
    assert bad == 4


def test_node_declares_ports(node_model):
    node = get_decoder_node("possm")(model=node_model, bin_width=BIN)
    spikes, counts = node.inputs
    assert (spikes.kind, spikes.rate) == ("spike_events", None)
    assert counts.kind == "binned_counts" and counts.rate == pytest.approx(64.0)
    assert list(spikes.channels) == node_model.session_units["sess0"]
    (out,) = node.outputs
    assert out.to_dict() == {**out.to_dict(), "kind": "predictions", "channels": ["vx", "vy"], "rate": 16.0}
    json.dumps(node.describe())  # plain data a host can serialize


def test_node_binned_equals_events_equals_offline(node_model, rng):
    counts = rng.poisson(0.4, size=(48, 8))
    ends = (np.arange(48) + 1) * BIN  # bin_stamp="end": each bin stamped when its counts are complete
    binned = PossmDecoderNode(model=node_model)
    pb = []
    for k in range(0, 48, 7):  # irregular packets, as a live source delivers them
        pb += binned.process_binned(counts[k:k + 7], ends[k:k + 7], bin_width=BIN)
    assert [p.chunk_index for p in pb] == list(range(12))
    assert pb[0].t_start == 0.0 and pb[-1].t_end == 0.75
    ch, t, _ = binned_to_events(counts, ends - BIN, BIN)
    events = PossmDecoderNode(model=node_model, t0=0.0)
    pe = []
    for k in range(12):
        sel = (t >= k * CHUNK) & (t < (k + 1) * CHUNK)
        pe += events.process_events(ch[sel], t[sel], watermark=(k + 1) * CHUNK)
    np.testing.assert_allclose([p.values for p in pb], [p.values for p in pe], rtol=1e-5, atol=1e-6)
    offline = StreamingDecoder(node_model).decode_offline(ch, t, t0=0.0, n_chunks=12)
    np.testing.assert_allclose(np.stack([p.values for p in pb]), offline, rtol=1e-4, atol=1e-5)
    assert binned.stats["bins_in"] == 48 and binned.stats["chunks_decoded"] == 12
    # bin times that mark bin starts give the same predictions; the width is inferred from the spacing
    starts = PossmDecoderNode(model=node_model, bin_stamp="start")
    ps = starts.process_binned(counts, ends - BIN)
    np.testing.assert_allclose([p.values for p in ps], [p.values for p in pb], rtol=1e-5, atol=1e-6)


def test_node_close(node_model, rng):
    node = PossmDecoderNode(model=node_model)
    node.process_binned(rng.poisson(0.5, size=(8, 8)), (np.arange(8) + 1) * BIN)
    decoded = node.stats["chunks_decoded"]
    assert decoded == 2
    with node:
        pass
    assert node.closed and node.stats["chunks_decoded"] == decoded
    with pytest.raises(PossmError, match="closed"):
        node.process_events([0], [1.0])
    node.close()  # idempotent


def test_node_reset_forgets_state(node_model, rng):
    counts = rng.poisson(0.5, size=(16, 8))
    ends = (np.arange(16) + 1) * BIN
    node = PossmDecoderNode(model=node_model)
    first = [p.values for p in node.process_binned(counts, ends)]
    node.reset()
    again = [p.values for p in node.process_binned(counts, ends + 4.0)]
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)  # a fresh state on a re-anchored grid


def test_node_rejects_bad_input(node_model, tiny_checkpoint):
    node = PossmDecoderNode(model=node_model)
    with pytest.raises(DataError, match=r"\(T, 8\)"):
        node.process_binned(np.zeros((3, 5)), [0, 0.01, 0.02])
    with pytest.raises(DataError, match="one time per bin"):
        node.process_binned(np.zeros((3, 8)), [0, 0.01])
    with pytest.raises(DataError, match="bin width"):
        node.process_binned(np.zeros((1, 8)), [0.0])
    with pytest.raises(ConfigError, match="bin_stamp"):
        PossmDecoderNode(model=node_model, bin_stamp="middle")
    with pytest.raises(ConfigError, match="either checkpoint or model"):
        PossmDecoderNode(checkpoint=str(tiny_checkpoint), model=node_model)
    with pytest.raises(ConfigError, match="unknown option"):
        PossmDecoderNode(model=node_model, colour="red")
    assert node.process_events([], []) == []  # no events, no watermark: nothing to decode
    loaded = PossmDecoderNode(checkpoint=str(tiny_checkpoint), session="sess0")
    assert loaded.session == "sess0" and len(loaded.unit_ids) == 16


# -- the host that knows nothing of POSSM ---------------------------------------------------------------
def _host_main():
    spec = importlib.util.spec_from_file_location("possm_example_host", HOST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_host_example_runs(tiny_checkpoint):
    source = HOST.read_text()
    imported = {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("possm") for m in imported), imported  # it knows nothing of POSSM
    proc = _run([str(HOST), "--checkpoint", str(tiny_checkpoint), "--seconds", "0.5"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "found decoder nodes: possm (possm-plugin)" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("t=")]
    assert len(lines) == 10 and "vx=" in lines[0] and "vy=" in lines[0]
    assert lines[0].startswith("t=  0.050 s") and lines[-1].startswith("t=  0.500 s")


def test_host_example_binned_and_missing_checkpoint(tiny_checkpoint, tmp_path, capsys):
    host_main = _host_main()
    assert host_main(["--checkpoint", str(tiny_checkpoint), "--seconds", "0.3", "--binned"]) == 0
    out = capsys.readouterr().out
    assert sum(ln.startswith("t=") for ln in out.splitlines()) == 6
    assert host_main(["--checkpoint", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert "could not start node 'possm'" in err and "does not exist" in err
