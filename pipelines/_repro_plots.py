"""The reproduction's plots (matplotlib, Agg): accuracy vs prompt length, the train-size sweep and
the main table's means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _repro_tables import PROBE_ROW, mean_of_all, num, short, train_images, variant_rank, with_probe


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plots(res: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if res["length"]:
        fig, axes = plt.subplots(1, len(res["length"]), figsize=(5 * len(res["length"]), 3.6), squeeze=False)
        for ax, (bb, inits) in zip(axes[0], res["length"].items(), strict=True):
            for init, pts in inits.items():
                for task, v in sorted(pts.items()):
                    ps = sorted(p for p in v if num(v[p].get("mean")) is not None)
                    ax.errorbar(ps, [100 * v[p]["mean"] for p in ps],
                                yerr=[100 * (num(v[p].get("std")) or 0) for p in ps], marker="o", capsize=3,
                                ls="-" if init == "random" else "--", label=f"{init} · {short(task)}")
            ax.set(xscale="log", xlabel="prompt length p", ylabel="test accuracy (%)",
                   title=f"VPT-deep, {bb} backbone")
            ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir / "acc_vs_prompt_length.png"))
    if res["size"]:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for variant, per_task in res["size"].items():
            ts = sorted(per_task, key=train_images)
            ax.errorbar([train_images(t) for t in ts], [100 * (per_task[t]["mean"] or 0) for t in ts],
                        yerr=[100 * (per_task[t]["std"] or 0) for t in ts], marker="o", capsize=3,
                        label=variant)
        probe = res.get("probe", {}).get("sup", {})
        sized = {t for v in res["size"].values() for t in v}
        ts = sorted((t for t in probe if t in sized), key=train_images)
        if ts:
            ax.plot([train_images(t) for t in ts], [100 * probe[t]["test"] for t in ts], "k:", marker="x",
                    label="probe")
        ax.set(xscale="log", xlabel="training images (MNIST)", ylabel="test accuracy (%)",
               title="full fine-tuning vs VPT-deep by train size")
        ax.legend()
        paths.append(_save(fig, out_dir / "train_size_sweep.png"))
    if res["main"]:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        variants = sorted({v for table in res["main"].values() for v in table}, key=variant_rank)
        width = 0.8 / len(res["main"])
        for i, (bb, table) in enumerate(res["main"].items()):
            table = with_probe(table, res.get("probe", {}).get(bb))
            names = [*variants, PROBE_ROW] if PROBE_ROW in table else variants
            means = []
            for v in names:
                cells = table.get(v, {}).values()
                m = mean_of_all([num(x.get("mean")) for x in cells]) if cells else None
                means.append(100 * m if m is not None else 0)
            ax.bar([j + i * width for j in range(len(names))], means, width, label=bb)
        labels = [*variants, "probe"]
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=30, ha="right",
                      fontsize=8)
        ax.set(ylabel="mean test accuracy (%)", title="mean over tasks (main table)")
        ax.legend()
        paths.append(_save(fig, out_dir / "main_table.png"))
    return paths
