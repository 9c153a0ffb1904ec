"""The figure BCI papers draw: cursor paths per decoder (centre-out reaches, coloured by target) and the
metrics side by side. Drawn from the experiment's JSON alone, so a committed JSON re-renders it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_report"]


def plot_report(report: dict, path: str | Path) -> Path:
    """Write the PNG for ``report`` (the dict :func:`~.experiment.run_experiment` returns) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    names = list(report["decoders"])
    traj = report.get("details", {}).get("trajectories", {})
    cfg = report.get("details", {}).get("config", {}).get("task", {})
    r_t = float(cfg.get("target_radius_cm", 2.0))
    radius = float(cfg.get("radius_cm", 10.0))
    n = len(names)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.4 * (n + 1), 3.6), gridspec_kw={"width_ratios": [1] * n + [1.3]})
    axes = np.atleast_1d(axes)
    cmap = plt.get_cmap("hsv")
    for ax, name in zip(axes[:n], names):
        for a in range(8):
            ang = 2 * np.pi * a / 8
            ax.add_patch(Circle((radius * np.cos(ang), radius * np.sin(ang)), r_t, fill=False, color="0.6", lw=0.8))
        ax.add_patch(Circle((0, 0), r_t, fill=False, color="0.6", lw=0.8))
        for tr in traj.get(name, []):
            xy = np.asarray(tr["xy"], float)
            ang = np.arctan2(tr["target"][1], tr["target"][0]) % (2 * np.pi)
            ax.plot(xy[:, 0], xy[:, 1], color=cmap(ang / (2 * np.pi)), lw=0.9, alpha=0.9 if tr["outcome"] == "success" else 0.35,
                    ls="-" if tr["outcome"] == "success" else ":")
        m = report["decoders"][name]
        ax.set_title(f"{name}: {100 * (m['success_rate'] or 0):.0f}% success", fontsize=9)
        lim = radius + 2.5 * r_t
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[-1]
    keys = [("success_rate", "success rate", lambda m: m["success_rate"]),
            ("ttt", "median time to target (s)", lambda m: m["time_to_target_s"]["median"]),
            ("itr", "Fitts ITR (bits/s)", lambda m: m["itr_bps"]),
            ("eff", "path efficiency", lambda m: m["path_efficiency"])]
    width = 0.8 / n
    for i, name in enumerate(names):
        vals = [f(report["decoders"][name]) or 0.0 for _, _, f in keys]
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([k[1] for k in keys], rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(f"{len(report['seeds'])} seed(s) x {report['trials']} trials", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
