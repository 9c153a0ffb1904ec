"""``possm pretrain --nproc-per-node N [--nnodes K --rdzv-endpoint HOST:PORT] --config FILE.yaml ...``:
multi-session pretraining with DistributedDataParallel (see docs/pretraining.md).

With more than one process it launches ``torchrun ... -m possm_plugin.training.distributed`` with the same
training flags and waits for it; with one process, or when already started by torchrun, it trains
in this process.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys

from possm_plugin.cli.formatter import HelpFormatter
from possm_plugin.errors import ConfigError
from possm_plugin.training.distributed import add_arguments, forward_argv, run_args

log = logging.getLogger("possm_plugin.cli.pretrain")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="multi-session pretraining on several processes or machines (torchrun + DDP)",
        formatter_class=HelpFormatter,
        description="Pretrain a POSSM on many sessions with DistributedDataParallel: gloo on CPU, nccl on GPU. "
                    "Sessions are sharded across ranks; only rank 0 writes the run directory. Flags override the config.",
    )
    g = p.add_argument_group("launch (passed to torchrun)")
    g.add_argument("--nproc-per-node", type=int, default=1, help="processes on this machine (GPU: one per GPU)")
    g.add_argument("--nnodes", type=int, default=1, help="machines taking part; run the same command on each")
    g.add_argument("--rdzv-endpoint", help="several machines, c10d rendezvous: HOST:PORT that every machine can reach "
                   "(the rendezvous decides which machine holds rank 0)")
    g.add_argument("--rdzv-id", default="possm-pretrain", help="c10d rendezvous: job id, the same on every machine")
    g.add_argument("--master-addr", help="several machines, static rendezvous: host of node 0 (with --node-rank); default 127.0.0.1")
    g.add_argument("--master-port", type=int, help="static rendezvous port (default on one machine: torchrun picks a free one)")
    g.add_argument("--node-rank", type=int, default=0, help="static rendezvous: this machine's rank; node 0 holds rank 0")
    g.add_argument("--print-command", action="store_true", help="print the torchrun command and exit")
    add_arguments(p)
    p.set_defaults(func=run)


def launch_command(args: argparse.Namespace) -> list[str]:
    """The torchrun command line that runs ``args`` on ``--nproc-per-node`` x ``--nnodes`` ranks."""
    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node={args.nproc_per_node} must be at least 1")
    if args.nnodes < 1:
        raise ConfigError(f"--nnodes={args.nnodes} must be at least 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc_per_node}", f"--nnodes={args.nnodes}"]
    if args.rdzv_endpoint:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={args.rdzv_endpoint}", f"--rdzv_id={args.rdzv_id}"]
    elif args.nnodes > 1:
        if not (args.master_addr and args.master_port):
            raise ConfigError(
                f"--nnodes={args.nnodes} needs --rdzv-endpoint HOST:PORT (c10d rendezvous), or --master-addr HOST "
                f"--master-port PORT --node-rank I (static rendezvous; HOST is node 0, reachable from every machine)"
            )
        if not 0 <= args.node_rank < args.nnodes:
            raise ConfigError(f"--node-rank={args.node_rank} must be in [0, --nnodes={args.nnodes})")
        cmd += [f"--node_rank={args.node_rank}", f"--master_addr={args.master_addr}", f"--master_port={args.master_port}"]
    elif args.master_port:
        cmd += [f"--master_addr={args.master_addr or '127.0.0.1'}", f"--master_port={args.master_port}"]
    else:  # one machine: torchrun binds a free port itself (no race with other programs for it)
        cmd += ["--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", f"--rdzv_id={args.rdzv_id}"]
    return [*cmd, "-m", "possm_plugin.training.distributed", *forward_argv(args)]


def run(args) -> int:
    if "WORLD_SIZE" in os.environ or (args.nproc_per_node == 1 and args.nnodes == 1 and not args.print_command):
        return run_args(args)  # one rank of a torchrun job, or a single process
    cmd = launch_command(args)
    if args.print_command:
        print(shlex.join(cmd))
        return 0
    env = os.environ.copy()
    # share this machine's cores between its ranks (torchrun would set 1 and warn)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc_per_node)))
    log.info("launching: %s", shlex.join(cmd))
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:  # torchrun received the interrupt too and is stopping its workers
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun stops its workers on SIGTERM as well
            proc.wait()
        raise
