"""Distributed pretraining: sharding, metric merging, one process without torchrun, and 2 CPU ranks
under a real torchrun that must end with identical weights."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from possm_plugin.cli import pretrain as pretrain_cli
from possm_plugin.data.prepared import prepare_sessions
from possm_plugin.errors import ConfigError
from possm_plugin.model.checkpoint import load_checkpoint
from possm_plugin.sim import simulate_motor_sessions, write_sessions
from possm_plugin.training.distributed import (
    LR_PER_SAMPLE,
    epoch_batches,
    main,
    merge_metrics,
    pretrain,
    rank_seed,
    shard_sessions,
    state_digest,
)
from possm_plugin.training.evaluate import evaluate_prepared
from possm_plugin.training.train import build_model, load_train_config

SPEC = {"preset": "small", "backbone": "gru", "dim": 32, "dim_head": 32, "backbone_kwargs": {"hidden": 32, "layers": 1}}
CONFIG = (
    "model: {preset: small, backbone: gru, dim: 32, dim_head: 32, backbone_kwargs: {hidden: 32, layers: 1}}\n"
    "train: {epochs: 2, batch_size: 8, seed: 0, progress: false, valid_fraction: 0.25}\n"
)
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def sessions():
    return simulate_motor_sessions(2, seed=3, duration_s=40.0)


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, sessions):
    root = tmp_path_factory.mktemp("pretrain")
    write_sessions(sessions, root / "data")
    (root / "cfg.yaml").write_text(CONFIG)
    return root


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (torchrun starts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# -- sharding and seeds ----------------------------------------------------------------------------
@pytest.mark.parametrize("n,world", [(2, 2), (5, 2), (7, 3), (16, 4)])
def test_sessions_are_partitioned_across_ranks_and_balanced(n, world):
    sizes = np.random.default_rng(n).uniform(30, 300, n)
    shards = [shard_sessions(n, r, world, sizes=sizes) for r in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(n))  # every session on exactly one rank
    assert all(shards)  # no idle rank
    loads = [sizes[s].sum() for s in shards]
    assert max(loads) - min(loads) <= sizes.max()  # greedy balance: within one session of each other
    assert shards == [shard_sessions(n, r, world, sizes=sizes) for r in range(world)]  # deterministic


def test_fewer_sessions_than_ranks_share_sessions_with_different_seeds():
    shards = [shard_sessions(2, r, 5) for r in range(5)]
    assert shards == [[0], [1], [0], [1], [0]]
    seeds = {rank_seed(0, r) for r in range(5)}
    assert len(seeds) == 5  # ranks on the same session draw different windows
    assert rank_seed(0, 1) == rank_seed(0, 1) and rank_seed(0, 1) != rank_seed(1, 1) != rank_seed(0, 1, epoch=3)
    with pytest.raises(ConfigError, match="rank=2"):
        shard_sessions(3, 2, 2)
    with pytest.raises(ConfigError, match="at least one training session"):
        shard_sessions(0, 0, 1)


def test_epoch_batches_are_full_and_exactly_as_many_as_asked():
    class Fake:
        rng = np.random.default_rng(0)

        def __len__(self):
            return 5

    batches = epoch_batches(Fake(), 4, 3)  # 12 windows from 5: wraps over several passes
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    assert set(flat) <= set(range(5)) and sorted(flat[:5]) == list(range(5))


def test_merged_per_rank_validation_equals_validating_everything(sessions):
    model = build_model(SPEC, sessions, seed=0)
    prepared = prepare_sessions(model, sessions)
    whole = evaluate_prepared(model, prepared)
    parts = [evaluate_prepared(model, [ps]) for ps in prepared] + [{}]  # a rank with nothing to validate
    merged = merge_metrics(parts, [s.session_id for s in sessions])
    assert merged["r2"] == pytest.approx(whole["r2"], abs=1e-12)
    assert merged["r2_per_session"] == whole["r2_per_session"]
    assert merged["r2_per_output"] == whole["r2_per_output"]


# -- one process -----------------------------------------------------------------------------------
def test_without_torchrun_it_trains_as_one_process(run_inputs, tmp_path, no_torchrun_env, sessions):
    cfg = load_train_config(run_inputs / "cfg.yaml", data=str(run_inputs / "data"), out=str(tmp_path / "run"), epochs=1)
    res = pretrain(cfg)
    assert res["world_size"] == 1 and res["backend"] is None and res["ranks_in_sync"]
    assert res["shards"] == {0: [s.session_id for s in sessions]}
    assert res["global_batch_size"] == 8
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    model, doc = load_checkpoint(tmp_path / "run")
    assert doc["meta"]["distributed"]["world_size"] == 1
    assert state_digest(model) == res["rank_digests"][0]
    assert not dist.is_initialized()


def test_errors_tear_the_process_group_down(run_inputs, tmp_path, monkeypatch, capsys):
    for var, val in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}.items():
        monkeypatch.setenv(var, val)
    destroyed = []
    real_destroy = dist.destroy_process_group

    def spy(*args, **kwargs):
        destroyed.append(dist.is_initialized())
        return real_destroy(*args, **kwargs)

    monkeypatch.setattr(dist, "destroy_process_group", spy)
    rc = main(["--config", str(run_inputs / "cfg.yaml"), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert rc == 1
    assert "error: data path" in capsys.readouterr().err
    assert destroyed == [True]  # a gloo group was made, and torn down after the error
    assert not dist.is_initialized()
    assert not (tmp_path / "run").exists()


# -- the command -----------------------------------------------------------------------------------
def _cli_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pretrain_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["pretrain", *argv])


def test_possm_pretrain_launches_torchrun_with_the_same_flags(run_inputs):
    args = _cli_args(["--nproc-per-node", "2", "--master-port", "29555", "--config", "c.yaml", "--data", "d", "--epochs", "3",
                      "--scale-lr", "--no-progress"])
    cmd = pretrain_cli.launch_command(args)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    local = pretrain_cli.launch_command(_cli_args(["--nproc-per-node", "2"]))
    assert {"--nnodes=1", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0"} <= set(local)
    assert "--nproc_per_node=2" in cmd and "--master_port=29555" in cmd and "--master_addr=127.0.0.1" in cmd
    tail = cmd[cmd.index("-m", 3):]
    assert tail == ["-m", "possm_plugin.training.distributed", "--config", "c.yaml", "--data", "d", "--epochs", "3", "--timeout", "1800.0",
                    "--scale-lr", "--no-progress"]
    multi = pretrain_cli.launch_command(_cli_args(["--nnodes", "2", "--nproc-per-node", "4", "--rdzv-endpoint", "head:29400"]))
    assert {"--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=head:29400", "--rdzv_id=possm-pretrain"} <= set(multi)
    static = pretrain_cli.launch_command(_cli_args(["--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29500"]))
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=29500"} <= set(static)
    with pytest.raises(ConfigError, match="--rdzv-endpoint"):
        pretrain_cli.launch_command(_cli_args(["--nnodes", "2"]))
    with pytest.raises(ConfigError, match="--node-rank=2"):
        pretrain_cli.launch_command(_cli_args(["--nnodes", "2", "--node-rank", "2", "--master-addr", "h", "--master-port", "1"]))
    from possm_plugin.training.distributed import config_from_args

    cfg = config_from_args(_cli_args(["--config", str(run_inputs / "cfg.yaml"), "--scale-lr"]), world_size=4)
    assert cfg.lr == pytest.approx(LR_PER_SAMPLE * 8 * 4)


# -- two ranks -------------------------------------------------------------------------------------
def _torchrun_two_ranks(config: Path, data: Path, out: Path) -> dict:
    """Pretrain on 2 CPU ranks under a real torchrun; returns rank 0's JSON summary."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    # rendezvous on 127.0.0.1, port 0: torchrun binds a free port itself (no race for a port picked in advance)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--rdzv_backend=c10d",
           "--rdzv_endpoint=127.0.0.1:0", "--rdzv_id=possm-test", "-m", "possm_plugin.training.distributed", "--config", str(config),
           "--data", str(data), "--out", str(out), "--json", "--timeout", "60"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=55)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        pytest.fail("2-rank pretraining did not finish in 55 s")
    # the failing child's traceback sits before torchrun's own report: show both
    failed = [ln for ln in stderr.splitlines() if "Error" in ln or "Traceback" in ln or "rank" in ln]
    # stdout tells whether rank 0 got through (its JSON line comes after the group is torn down)
    assert proc.returncode == 0, "\n".join(failed[-60:]) + "\n---\n" + stderr[-6000:] + "\n--- stdout:\n" + stdout[-2000:]
    assert time.monotonic() - t0 < 60
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, stdout  # only rank 0 reports
    return json.loads(lines[0])


@pytest.mark.slow
def test_two_cpu_ranks_under_torchrun_agree_on_the_weights(run_inputs, tmp_path, sessions):
    out = tmp_path / "run"
    res = _torchrun_two_ranks(run_inputs / "cfg.yaml", run_inputs / "data", out)
    assert res["world_size"] == 2 and res["backend"] == "gloo" and res["global_batch_size"] == 16

    # the ranks trained on disjoint sessions that cover the data, and saw different windows
    shards = res["shards"]
    assert sorted(shards["0"] + shards["1"]) == sorted(s.session_id for s in sessions) and not set(shards["0"]) & set(shards["1"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # written once per epoch: by rank 0 only
    assert all(len(r["train_loss_per_rank"]) == 2 and r["train_loss_per_rank"][0] != r["train_loss_per_rank"][1] for r in rows)

    # both ranks end bit-identical, equal to the checkpoint rank 0 wrote, and away from the start
    d0, d1 = res["rank_digests"]
    assert d0 == d1 and res["ranks_in_sync"]
    assert sorted(p.name for p in out.iterdir()) == [
        "best.safetensors", "best.yaml", "last.optim.safetensors", "last.safetensors", "last.yaml", "metrics.jsonl"]
    best, doc = load_checkpoint(out / "best.yaml")
    assert state_digest(best) == d0
    assert doc["meta"]["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch_size": 16, "written_by_rank": 0}
    init = build_model(SPEC, sessions, seed=0)
    assert state_digest(init) != d0
    moved = max((best.state_dict()[k] - v).abs().max().item() for k, v in init.state_dict().items() if v.is_floating_point())
    assert moved > 1e-3


@pytest.mark.slow
def test_recipe_features_work_under_torchrun(run_inputs, tmp_path, sessions):
    """The ranks run train.fit's loop: min_steps adds epochs, and with ema the validation, best.* and the
    weights every rank ends with are the average of the weights, while last.* holds the live ones."""
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(CONFIG.replace("epochs: 2,", "epochs: 1, min_steps: 12, ema: 0.9, jitter_s: 0.05,"))
    out = tmp_path / "run"
    res = _torchrun_two_ranks(cfg, run_inputs / "data", out)
    steps = res["steps_per_epoch"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps < 12 and len(rows) == -(-12 // steps) >= 2  # 1 epoch asked, at least 12 steps run
    assert all(r["steps"] == steps for r in rows)
    best, doc = load_checkpoint(out / "best.yaml")
    last, _ = load_checkpoint(out / "last.yaml")
    assert {k: doc["meta"]["train"][k] for k in ("ema", "jitter_s", "min_steps", "epochs_run")} == {
        "ema": 0.9, "jitter_s": 0.05, "min_steps": 12, "epochs_run": len(rows)}
    assert res["ranks_in_sync"] and state_digest(best) == res["rank_digests"][0]  # every rank ends at the averaged best
    r2 = {name: evaluate_prepared(m, prepare_sessions(m, sessions, valid_fraction=0.25))["r2"] for name, m in (("best", best), ("last", last))}
    assert r2["best"] == pytest.approx(doc["meta"]["valid"]["r2"], abs=1e-6)  # validated what best.* holds
    assert abs(r2["last"] - rows[-1]["valid"]["r2"]) > 1e-4  # the last epoch validated the average, not the live weights


def test_a_bad_model_section_fails_before_any_rank_joins_the_group(run_inputs, tmp_path, monkeypatch, capsys):
    for var, val in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}.items():
        monkeypatch.setenv(var, val)
    from possm_plugin.training import train as train_mod

    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: joined.append(a))
    monkeypatch.setattr(train_mod, "load_sessions", lambda *a, **k: pytest.fail("the data was read before the model section was checked"))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(CONFIG.replace("dim: 32,", "dimm: 32,"))
    t0 = time.perf_counter()
    rc = main(["--config", str(cfg), "--data", str(tmp_path / "huge"), "--out", str(tmp_path / "run")])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("possm pretrain [rank 0]: error: model config: unknown key(s) ['dimm']") and "\n" not in err, err
    assert took < 1.0 and joined == [] and not (tmp_path / "run").exists()
