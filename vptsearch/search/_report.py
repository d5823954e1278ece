"""Launch-level summary (like VPT's Table 13) and plots, written next to the run and to MLflow."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SUMMARY_COLUMNS = (
    "task",
    "group",
    "method",
    "p",
    "init",
    "tuned_percent",
    "val_acc",
    "test_mean",
    "test_std",
    "ensemble_test",  # the final seeds' prompt ensemble (mean logits) on test, None for one seed
    "probe_val",  # the frozen-feature probe reference (vptsearch.probe), None when skipped
    "probe_test",
    "gap_to_probe",  # test_mean - probe_test, in points (see probe_gap_warning)
    "completed",
    "pruned",
    "diverged",
    "failed",
)
# the columns a row may lack: a launch without final seeds' ensemble or without the probe
OPTIONAL_COLUMNS = ("ensemble_test", "probe_val", "probe_test", "gap_to_probe")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_summary(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """``summary.parquet``, ``summary.md`` and ``summary.html`` in ``out_dir``."""
    import pandas as pd  # import cost: `vptsearch report` and markdown_table need no pandas

    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    paths = {
        "parquet": out_dir / "summary.parquet",
        "md": out_dir / "summary.md",
        "html": out_dir / "summary.html",
    }
    df.to_parquet(paths["parquet"], index=False)
    paths["md"].write_text(markdown_table(rows))
    paths["html"].write_text(df.to_html(index=False, na_rep="-", float_format=lambda x: f"{x:.4f}"))
    return paths


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ["task", "group", "method", "p", "init", "tuned %", "val", "test mean ± std", "ensemble test",
            "probe val / test", "gap to probe",
            "trials c/p/d/f"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        test = (
            "-"
            if r.get("test_mean") is None or math.isnan(r["test_mean"])
            else f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}"
        )
        tuned = "-" if r.get("tuned_percent") is None else f"{r['tuned_percent']:.3f}"
        val = "-" if r.get("val_acc") is None else f"{100 * r['val_acc']:.2f}"
        counts = "/".join(str(r.get(k, 0)) for k in ("completed", "pruned", "diverged", "failed"))
        probe = (
            "-"
            if r.get("probe_test") is None
            else f"{100 * r['probe_val']:.2f} / {100 * r['probe_test']:.2f}"
        )
        ens = "-" if r.get("ensemble_test") is None else f"{100 * r['ensemble_test']:.2f}"
        cells = [
            r["task"],
            r["group"],
            r.get("method") or "-",
            _fmt(r.get("p")),
            r.get("init") or "-",
            tuned,
            val,
            test,
            ens,
            probe,
            _gap(r.get("gap_to_probe")),
            counts,
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _gap(points: float | None) -> str:
    return "-" if points is None else f"{points:+.2f}"


# A winner this many points under its own probe is flagged: the search did not beat the features.
GAP_WARN_POINTS = 2.0


def probe_gap_warning(rows: list[dict[str, Any]], best_configs: dict[str, dict[str, Any]]) -> str | None:
    """One line naming the tasks whose test mean is over :data:`GAP_WARN_POINTS` under the probe,
    with the likely cause and the key to change (None when every task is within it).

    ``best_configs``: each task's winning trial config (its ``head.init`` tells the likely cause).
    """
    low = [r for r in rows if r.get("gap_to_probe") is not None and r["gap_to_probe"] < -GAP_WARN_POINTS]
    if not low:
        return None
    names = ", ".join(f"{r['task']} ({r['gap_to_probe']:+.1f})" for r in low)
    from vptsearch.spec import param_value  # torch-free

    configs = [best_configs.get(r["task"], {}) for r in low]
    fitted = [c for c in configs if param_value(c, "head.init") == "probe"]
    # full fine-tuning trains its random head with the body (its default); the others' random head
    # is the slow SGD head of issue 12
    unfitted = [c for c in configs if c not in fitted and c.get("method") != "full"]
    if unfitted:
        hint = (
            "the linear head is likely under-trained (an SGD head from a random start needs far more "
            "epochs than a trial has on these features): set params.head.init: probe"
        )
    elif not fitted:  # full fine-tuning from its random head
        hint = (
            "full fine-tuning moved the features away from what the probe reads: lower optim.base_lr, "
            "or add the linear method to method's choice (it keeps the fit)"
        )
    else:  # what moved a fitted head in the measurements (docs/search.md "The head: init and lr")
        norms = {param_value(c, "head.norm") for c in fitted}
        scales = {float(param_value(c, "optim.head_lr_scale")) for c in fitted}
        first = (
            "set params.head.norm: standardize (batch statistics move a fitted head), "
            if "batchnorm" in norms
            else ""
        )
        # on a backbone whose features the prompts move fast, a slow head cannot follow them
        # (benchmarks/README.md "The head's lr on two backbones"); at the full lr it drifts off its fit
        slow = (
            "search optim.head_lr_scale over [0.1, 1] (a slow head cannot follow moving features), "
            if max(scales) < 1
            else ""
        )
        # the trained head ends under the fit on the trained features (docs/search.md "The head
        # after the last epoch": MAE dsprites_loc 32.4 -> 35.0 %)
        refit = (
            "set params.head.refit: probe (the head refitted on the trained prompts' features), "
            if any(param_value(c, "head.refit") == "none" for c in fitted)
            else ""
        )
        # full fine-tuning from a fitted head collapsed in the reproduction (docs/search.md)
        full = (
            "for method full set params.head.init: random (a fitted head's gradients distort the "
            "whole backbone), "
            if any(c.get("method") == "full" for c in fitted)
            else ""
        )
        hint = (
            "the head starts at the probe's fit, so training moved it away: "
            f"{refit}{full}{first}{slow}search prompt.init over spt-* (random prompts move the features "
            "faster than the head follows), "
            "or add the linear method to method's choice (it keeps the fit)"
        )
    return f"warning: winner more than {GAP_WARN_POINTS:g} points under its probe on {names}; {hint}"


def write_plots(trials: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``acc_vs_prompt_length.png`` and ``random_vs_spt.png`` from completed search trials."""
    import matplotlib  # import cost: only a finished launch draws plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    done = [t for t in trials if t["status"] == "completed" and t.get("val_acc") is not None]
    tasks = sorted({t["task"] for t in trials})
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for task in tasks:
        best: dict[int, float] = {}
        for t in done:
            p = t["config"].get("prompt.length")
            if t["task"] == task and p is not None:
                best[int(p)] = max(best.get(int(p), 0.0), t["val_acc"])
        if best:
            xs = sorted(best)
            ax.plot(xs, [best[x] for x in xs], marker="o", label=task)
    ax.set_xscale("symlog", linthresh=1)
    ax.set(
        xlabel="prompt length p",
        ylabel="best val accuracy (completed trials)",
        title="Accuracy vs prompt length",
    )
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "acc_vs_prompt_length.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    from vptsearch.search._protocol import strategy_of  # import cost: _protocol imports Ray and Optuna

    # every init some trial tried: one whose trials on a task were all pruned (or never ran there)
    # has no bar, so it is labelled instead of reading as 0 %
    searched = [t for t in trials if t.get("config") is not None]
    strategies = sorted({strategy_of(t["config"]) for t in searched})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks)), 4))
    width = 0.8 / max(1, len(strategies))
    for j, s in enumerate(strategies):
        bar_xs = [i + j * width for i in range(len(tasks))]
        vals: list[float | None] = [
            max(
                (t["val_acc"] for t in done if t["task"] == task and strategy_of(t["config"]) == s),
                default=None,
            )
            for task in tasks
        ]
        ax.bar(bar_xs, [v or 0.0 for v in vals], width, label=s)
        for x, v, task in zip(bar_xs, vals, tasks, strict=True):
            if v is None:
                label = missing_bar_label(searched, task, s)
                ax.text(x, 0.01, label, rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(tasks))], [t.split("/")[-1] for t in tasks], rotation=30
    )
    ax.set(ylabel="best val accuracy", title="Random vs SPT initialisation (best completed trial)")
    if strategies:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "random_vs_spt.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def missing_bar_label(trials: list[dict[str, Any]], task: str, strategy: str) -> str:
    """Why ``task`` has no bar for init ``strategy`` in random_vs_spt.png (no completed trial)."""
    from vptsearch.search._protocol import strategy_of  # import cost, as in write_plots

    statuses = {t["status"] for t in trials if t["task"] == task and strategy_of(t["config"]) == strategy}
    if not statuses:
        return "not tried"
    return "all pruned" if statuses == {"pruned"} else "none completed"


def write_trials(trials: list[dict[str, Any]], path: Path) -> None:
    """``trials.parquet``: one row per search trial, its config keys as columns."""
    import pandas as pd  # import cost, as in write_summary

    flat = [{**{k: v for k, v in t.items() if k != "config"}, **t["config"]} for t in trials]
    pd.DataFrame(flat).to_parquet(path, index=False)


def write_report(rows: list[dict[str, Any]], trials: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """summary.{md,html,parquet}, the plots and trials.parquet in ``out_dir`` (a run dir's report)."""
    paths = list(write_summary(rows, out_dir).values()) + write_plots(trials, out_dir)
    write_trials(trials, out_dir / "trials.parquet")
    return [*paths, out_dir / "trials.parquet"]


def running_line(run_dir: Path, holder: dict[str, Any], then: str) -> str:
    """One line for a command asked about a launch that is still running (its lock is held): who
    runs it, how far its search is (from the Optuna journal, the one record a running launch
    keeps up to date on disk), and ``then``: when what was asked for will be there."""
    from vptsearch.search._runlock import holder_text

    return (
        f"launch {run_dir.parent.name}/{run_dir.name} is still running ({holder_text(holder)}); "
        f"{search_progress(run_dir)}; {then}"
    )


def search_progress(run_dir: Path) -> str:
    """``search trials ended so far: mini/digits 3/4, ...`` (or that none has started yet)."""
    journal = run_dir / "optuna.journal"
    if not journal.is_file():
        return "no search trial has ended yet"
    import optuna  # import cost: only a report on a running launch reads its journal
    import yaml
    from optuna.storages.journal import JournalFileBackend

    try:
        saved = yaml.safe_load((run_dir / "spec.yaml").read_text()) or {}
        search = saved.get("search") or {}
        budget = search.get("trials_per_task") if search.get("algorithm") != "grid" else None
    except (OSError, yaml.YAMLError, AttributeError):
        budget = None
    try:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        ended = {}
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            ended[summary.study_name] = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    except Exception:  # being written right now: the counts are a courtesy, the line still stands
        return "its search trials cannot be counted right now"
    if not ended:
        return "no search trial has ended yet"
    of = f"/{budget}" if budget else ""
    return "search trials ended so far: " + ", ".join(f"{task} {n}{of}" for task, n in ended.items())
