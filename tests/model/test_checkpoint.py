import shutil

import pytest
import torch
import yaml
from conftest import make_tiny_model

from possm_plugin.errors import CheckpointError
from possm_plugin.model.checkpoint import load_checkpoint, read_checkpoint_config, resolve_checkpoint, save_checkpoint


def test_round_trip_gives_identical_outputs(tmp_path):
    m = make_tiny_model("s4d", n_units=10)
    path = save_checkpoint(m, tmp_path / "ck", meta={"epoch": 3})
    m2, doc = load_checkpoint(path)
    assert doc["meta"]["epoch"] == 3 and doc["default_session"] == "sess0"
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # every spelling of the path finds it
    for p in (tmp_path / "ck.safetensors", tmp_path / "ck", tmp_path):
        assert resolve_checkpoint(p)[1] == path


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.yaml")
    m = make_tiny_model()
    path = save_checkpoint(m, tmp_path / "ck")
    path.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"ck\.safetensors' does not exist"):
        load_checkpoint(path)


def test_corrupt_weights_are_detected_by_hash_and_by_format(tmp_path):
    path = save_checkpoint(make_tiny_model(), tmp_path / "ck")
    w = path.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_checkpoint(path)
    w.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path, verify_hash=False)


def test_truncated_weights(tmp_path):
    path = save_checkpoint(make_tiny_model(), tmp_path / "ck")
    w = path.with_suffix(".safetensors")
    w.write_bytes(w.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(path, verify_hash=False)


def test_weights_of_another_model_are_a_clear_mismatch(tmp_path):
    a = save_checkpoint(make_tiny_model(n_units=10), tmp_path / "a")
    save_checkpoint(make_tiny_model(n_units=12), tmp_path / "b")
    shutil.copy(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"unit_emb.weight' has shape \(13, 32\).*builds \(11, 32\)"):
        load_checkpoint(a, verify_hash=False)
    save_checkpoint(make_tiny_model("mamba"), tmp_path / "c")
    shutil.copy(tmp_path / "c.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_checkpoint(a, verify_hash=False)


def test_bad_configs(tmp_path):
    path = save_checkpoint(make_tiny_model(), tmp_path / "ck")
    doc = yaml.safe_load(path.read_text())
    for mutate, msg in [
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d.update(format="other"), "not a possm-plugin checkpoint"),
        (lambda d: d["model"].update(dim=-1), "dim=-1"),
        (lambda d: d["model"].update(bogus=1), "unknown key"),
        (lambda d: d.update(default_session="nope"), "default_session 'nope'"),
        (lambda d: d.pop("unit_ids"), "'unit_ids' is missing"),
    ]:
        d = yaml.safe_load(yaml.safe_dump(doc))
        mutate(d)
        path.write_text(yaml.safe_dump(d))
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(path, verify_hash=False)
    path.write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        read_checkpoint_config(path)


def test_yaml_cannot_execute_code(tmp_path):
    path = save_checkpoint(make_tiny_model(), tmp_path / "ck")
    marker = tmp_path / "pwned"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_nan_weights_are_rejected(tmp_path):
    m = make_tiny_model()
    with torch.no_grad():
        m.readout.weight[0, 0] = float("nan")
    path = save_checkpoint(m, tmp_path / "ck")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_checkpoint(path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["umask022", "umask077", "umask002"])
def test_every_file_of_a_checkpoint_gets_the_same_mode_from_the_umask(tmp_path, umask):
    """safetensors' save_file makes 0600 files whatever the umask; the YAML beside them was 0644: a
    checkpoint shared with a group or another user had readable metadata and unreadable weights."""
    import os
    import stat

    from possm_plugin.training.optim import load_optimizer_state as _load_optim
    from possm_plugin.training.optim import save_optimizer_state as _save_optim

    m = make_tiny_model("gru", n_units=8)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    sum(p.sum() for p in m.parameters()).backward()
    opt.step()
    old = os.umask(umask)
    try:
        path = save_checkpoint(m, tmp_path / "ck")
        _save_optim(opt, tmp_path / "ck.optim.safetensors", {"epoch": 0})
    finally:
        os.umask(old)
    files = [path, path.with_suffix(".safetensors"), tmp_path / "ck.optim.safetensors"]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~umask}
    assert not list(tmp_path.glob("*.tmp"))
    load_checkpoint(path)  # the hash in the YAML is the written file's
    assert _load_optim(torch.optim.AdamW(m.parameters(), lr=1e-3), tmp_path / "ck.optim.safetensors")["epoch"] == 0
