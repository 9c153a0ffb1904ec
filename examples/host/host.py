"""A host that knows nothing of POSSM.

It finds decoder nodes the way any host would: it reads the ``possm_plugin`` entry-point group
with ``importlib.metadata``, loads each plugin with pluggy (skipping, and saying, any that fails),
asks them to ``register`` their decoder nodes, instantiates the one named ``possm``, feeds it
simulated spikes and prints its predictions. It imports nothing from possm_plugin.

    python examples/host/host.py                          # the checkpoint bundled with POSSM
    python examples/host/host.py --checkpoint runs/x/best.yaml --seconds 3
    python examples/host/host.py --binned                 # feed 10 ms binned counts instead of events
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import sys

import numpy as np
import pluggy

GROUP = "possm_plugin"  # POSSM's pluggy project name and entry-point group
hookspec = pluggy.HookspecMarker(GROUP)


class DecoderNodeSpec:
    """The one hook this host needs (the decoder-node hook of POSSM's plugin interface)."""

    @hookspec
    def possm_register_decoder_nodes(self, register):
        """Call ``register(name, factory, description=...)`` for each decoder node."""


def discover_decoder_nodes() -> dict[str, tuple]:
    """name -> (factory, description, plugin name, distribution) of every installed decoder node."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(DecoderNodeSpec)
    for ep in importlib.metadata.entry_points(group=GROUP):
        try:
            pm.load_setuptools_entrypoints(GROUP, name=ep.name)
        except Exception as exc:  # a broken plugin must not stop the host
            print(f"host: skipping plugin {ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}", file=sys.stderr)
    dists = {pm.get_name(p): d.project_name for p, d in pm.list_plugin_distinfo()}
    nodes: dict[str, tuple] = {}
    for impl in pm.hook.possm_register_decoder_nodes.get_hookimpls():
        def register(name, factory, *, description="", _plugin=impl.plugin_name):
            nodes[name] = (factory, description, _plugin, dists.get(_plugin))

        pm.subset_hook_caller("possm_register_decoder_nodes", [p for p in pm.get_plugins() if p is not impl.plugin])(register=register)
    return nodes


def simulate(n_channels: int, seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Poisson spikes whose rates follow a slowly turning 2-D velocity (cosine tuning)."""
    rng = np.random.default_rng(seed)
    dt = 0.001
    t = np.arange(0.0, seconds, dt)
    vel = np.stack([np.cos(2 * math.pi * 0.5 * t), np.sin(2 * math.pi * 0.5 * t)], axis=1)
    pref = rng.uniform(0, 2 * math.pi, n_channels)
    rates = 10.0 + 8.0 * (vel @ np.stack([np.cos(pref), np.sin(pref)]))  # (T, C) Hz
    fired = rng.random(rates.shape) < rates * dt
    ti, ch = np.nonzero(fired)
    times = t[ti] + rng.random(len(ti)) * dt
    order = np.argsort(times)
    return ch[order], times[order]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--node", default="possm", help="decoder node to instantiate")
    ap.add_argument("--checkpoint", default=None, help="checkpoint given to the node (default: the node's own default)")
    ap.add_argument("--device", default="cpu", help="device given to the node")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds of simulated spikes")
    ap.add_argument("--packet", type=float, default=0.01, help="seconds of spikes per call, as a live source delivers them")
    ap.add_argument("--binned", action="store_true", help="feed binned counts (one bin per packet) instead of events")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    nodes = discover_decoder_nodes()
    print(f"host: found decoder nodes: {', '.join(f'{n} ({v[3] or v[2]})' for n, v in sorted(nodes.items())) or 'none'}")
    if args.node not in nodes:
        print(f"host: error: no decoder node named {args.node!r}; install a package that provides one", file=sys.stderr)
        return 1
    factory = nodes[args.node][0]
    try:
        node = factory(checkpoint=args.checkpoint, device=args.device)
    except Exception as exc:
        print(f"host: error: could not start node {args.node!r}: {exc}", file=sys.stderr)
        return 1

    with node:
        inputs = {p.kind: p for p in node.inputs}
        out = node.outputs[0]
        channels = list(inputs["spike_events"].channels)
        print(f"host: node {args.node!r}: {len(channels)} input channels -> outputs {list(out.channels)} at {out.rate:g} Hz")
        ch, times = simulate(len(channels), args.seconds, args.seed)
        n_packets = round(args.seconds / args.packet)
        node.process_events([], [], watermark=0.0)  # the stream starts at t = 0: chunks end at 0.05, 0.10, ...
        n_pred = 0
        for k in range(n_packets):
            t0, t1 = k * args.packet, (k + 1) * args.packet
            sel = (times >= t0) & (times < t1)
            if args.binned:
                counts = np.bincount(ch[sel], minlength=len(channels)).reshape(1, -1)
                preds = node.process_binned(counts, [t1], bin_width=args.packet)  # stamped at the bin's end
            else:
                preds = node.process_events(ch[sel], times[sel], watermark=t1)
            for p in preds:
                vals = "  ".join(f"{name}={v:+8.3f}" for name, v in zip(out.channels, p.values))
                print(f"t={p.t_end:7.3f} s  {vals}   ({p.n_spikes} spikes, {p.compute_ms:.2f} ms)")
                n_pred += 1
        stats = node.stats
        print(f"host: {n_pred} predictions from {stats['spikes_in']} spikes; compute p50 {stats['compute_ms']['p50']:.3f} ms")
    return 0 if n_pred else 1


if __name__ == "__main__":
    sys.exit(main())
