"""Simulated-GPU launch: platform efficiency of vptsearch's launch path at GPU speed, old vs new engine.

    python benchmarks/bench_gpu_sim.py            # 16 slots, 19 tasks x 27 = 513 trials, local and S3
    python benchmarks/bench_gpu_sim.py --smoke    # 2 slots, 2 tasks x 3 trials of 12 epochs: seconds
    python benchmarks/bench_gpu_sim.py --storage local --trials-per-task 10

What runs for real: the search and final phases of a launch, i.e. ``_phases.run_tuner`` (a
``tune.Tuner`` with the launch's TuneConfig/RunConfig: reuse_actors, FailureConfig, checkpoints)
with ``build_searcher`` (one seeded TPE per task, Optuna journal), ``build_scheduler`` (per-task
ASHA, grace 10, reduction 3: vtab_deep.yaml), then each task's winner with the 3 final seeds (100
epochs on train800 + val200, the 2 000-image test split once at the end): mode ``new`` runs them
in the search's Tuner as each task's search ends (``FinalsAfterSearch``), the other modes in a
second Tuner after the whole search, as the launch did before (``--search-only``: no finals, the
figure published before they were part of it). The launch's callbacks (Ray metrics, MLflow through
the durable spool and its background writer into a sqlite store, progress lines) and Tune storage
from ``launch_storage``: the local run dir, or ``s3://`` through moto's S3 server (a separate
process on 127.0.0.1, as tests/search/test_storage.py uses it). Ray sees ``--slots`` GPUs and every
trial reserves one (``resources: {cpu: 1, gpu: 1}``), so Tune schedules as on a 16-GPU cluster.

The trainable (``sim_trainable``, swapped in for ``_trainable.make_trainable`` as
bench_platform_overhead does) does what ``run_trial`` does around the compute, for a
ViT-B/16-shaped VPT-deep model (p drawn from {1, 50, 200}, 768 wide, 12 layers): it builds the real
trained tensors (deep prompts [12, p, 768], a 768 x C head) and the real SGD optimizer with its
momentum buffers (so checkpoints have their real sizes: 15 MB at p = 200), sets the lr of every
step (``lr_at``), reports every epoch through the real ``TuneReporter`` (``torch.save`` of the real
state, Tune's persist to local storage or the S3 upload) on the epochs the engine checkpoints
(``checkpoint_epochs``: old behaviour = every epoch, new = every 10 + ASHA rungs + last), and
evaluates val200 every epoch. Only work that a real node does on the GPU, or on the trial's own CPU
cores, is a calibrated wait (16 slots share the 2 cores here, so doing it for real would measure the
core shortage, not the engine):

- GPU compute. Anchor: ViT-B/16 at 224 px, VPT-deep p = 50: 247 tokens per layer, forward
  ~44.5 GFLOP/image (12 x (12 N d^2 + 2 N^2 d) multiply-adds x 2), training ~89 GFLOP/image (forward
  + input-gradient backward; the frozen backbone has no weight gradients); 800 images/epoch =
  71 TFLOP; an H100-class GPU (989 TFLOP/s dense bf16) at 40 % of peak = 396 TFLOP/s, so
  0.18 s per 800-image epoch (``--epoch-seconds``). Other p and the forward-only val200 scale by the
  analytic FLOP count (:func:`vit_flops`; it models the CLS-only last block too): p = 1 0.14 s,
  p = 200 0.30 s per epoch, val200 ~0.02 s. Steps are queued on a simulated GPU clock: the host
  only waits at its synchronisation points.
- Host synchronisation. Old: two host reads per step (loss, accuracy) and two per eval batch, each
  draining the queue and costing ``SYNC_S``; new: one read per epoch (and every
  DIVERGENCE_CHECK_EVERY steps) and one per eval.
- Data. Old: every batch normalised on the host (the project's ``Normalise``, its single-core time
  measured at start on this machine as thread CPU time, so other jobs on the cores do not inflate
  it) and copied to the GPU (pageable, ``H2D_BYTES_PER_S``) while the GPU waits; new: uint8 splits
  resident on the device (``_DEVICE_CACHE``'s LRU of DEVICE_CACHE_SIZE splits, a miss pays one H2D
  copy of the split). Decode (the project's ``decode_image`` on a 224-px JPEG, timed at start):
  old paths, once per worker process and split; new, once per launch and split through the
  launch's real split store (``_split_store``: the first worker "decodes" and puts a zeroed split
  of the real size into the object store, the others map it).
- Model build. Both: once per worker, the backbone from the object store (``timm.create_model`` +
  ``load_state_dict``, timed at start). Old: ``build_model``'s deep copy of the backbone per trial
  (timed at start: the real ``build_model`` with a backbone that is not frozen, minus the frozen one)
  and its H2D copy; new: shared, one H2D copy per worker.

Platform efficiency = simulated compute seconds (GPU train + eval) / (Tuner wall seconds x slots);
a slot is the simulated GPU Ray gave the trial (the same 16 in both Tuners of the old layout, whose
switch from the search's Tuner to the final one counts as time between trials).
``steady_efficiency`` leaves out each slot's time before its first trial started (16 Ray workers
importing torch on 2 cores: minutes here, seconds on a GPU node). The breakdown splits the slot-seconds
(sums to 1): compute, model build, data, host sync, eval bookkeeping, checkpoint (state snapshot,
torch.save, persist/upload), report (tune.report and its wait on the driver), other in-trial work,
worker start-up, between trials (a slot idle from its trial's last report to its next trial's
start: the driver's scheduling, searcher, callbacks, actor reuse) and tail (a slot idle after its
last trial: nothing was left to start; ``steady_efficiency_without_tail`` leaves it out as well).

The driver's own cost (``driver_costs``, see ``_driver_costs.py``): CPU ms of its main thread per
result and per trial, results per second, and from those a projection to an 8-GPU node with 16
slots and a core per slot (``projection_8gpu_node_16_slots``: formula and inputs printed). Modes:
``new`` is the launch path as it is, ``before`` the same trial engine on the launch path before
issue 29 (a result every epoch, Tune's ``num_to_keep=1``, one pending trial), ``baseline`` the old
trial engine on that path. Timing is never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# baseline: the old trial engine on the launch path as it was before issue 29; before: today's trial
# engine on that launch path (a result every epoch, Tune's num_to_keep=1, one pending trial);
# new: the launch path now (results at rungs/checkpoints + one per report_every_s, checkpoints
# pruned by the launch, as many pending trials as slots, each task's finals in the search's Tuner);
# final_tuner: the same but the finals in a second Tuner after the whole search (before f7d91be)
MODES = ("baseline", "before", "final_tuner", "new")
OLD_PLATFORM = ("baseline", "before")
STORAGES = ("local", "s3")
TARGETS = {"local": 0.90, "s3": 0.80}
FIXED_COST_TARGET = 0.02  # per-trial fixed cost / an 18-s trial
PROJECTION_TARGET = 0.95  # an 8-GPU node, 16 slots, from the measured per-event costs

# ViT-B/16 at 224 px
DIM, DEPTH, PATCHES, MLP_RATIO = 768, 12, 196, 4
BACKBONE_BYTES = 86_000_000 * 4  # fp32 weights, ~344 MB
# The anchor: ~89 GFLOP per training image at p = 50 (2 x forward, full 12 blocks as the issue counts),
# 800 images, 989 TFLOP/s dense bf16 at 40 % -> 0.18 s per epoch.
ANCHOR_P, ANCHOR_IMAGES, PEAK_FLOPS, MFU = 50, 800, 989e12, 0.40
_N = PATCHES + 1 + ANCHOR_P
ANCHOR_EPOCH_S = 2 * 2 * DEPTH * (12 * _N * DIM**2 + 2 * _N**2 * DIM) * ANCHOR_IMAGES / (PEAK_FLOPS * MFU)
H2D_BYTES_PER_S = 10e9  # pageable host->device copy, PCIe 4.0 x16
SYNC_S = 30e-6  # one host read of a device scalar: queue drain + D2H + the next launch
TRAIN_IMAGES, VAL_IMAGES, IMAGE_BYTES = 800, 200, 3 * 224 * 224
TEST_IMAGES = 2_000  # a final trial's one test pass (VTAB-1k test splits: ~700 to 22 000 images)
SPLIT_STORE_BYTES = 8 * 2**30  # 19 tasks' train800 + val200 at 224 px: 2.9 GB


def vit_flops(p: int, *, impl: str = "tokens", train: bool = True, cls_only_last: bool = True) -> float:
    """FLOPs (2 x multiply-adds) per image of ViT-B/16 at 224 px with ``p`` deep prompts.

    ``tokens``: the prompts are ``p`` extra tokens of every layer (N = 197 + p): per block
    12 N d^2 (qkv 3, proj 1, MLP 8) + 2 N^2 d (QK^T, AV). ``prefix_kv``: prompts only as extra keys
    and values (2 p d^2 for their K/V, 2 N0 (N0 + p) d attention; N0 = 197). ``cls_only_last``: the
    last block computes the CLS query only (TunedModel.cls_only_last_block). ``train``: forward +
    the input-gradient backward (~2 x forward: the frozen weights get no gradient).
    """
    n0, d = PATCHES + 1, DIM
    macs = PATCHES * 3 * 256 * d  # patch embedding (16 x 16 x 3 -> 768)
    for i in range(DEPTH):
        last = cls_only_last and i == DEPTH - 1
        if impl == "tokens":
            n, keys, extra = n0 + p, n0 + p, 0.0
        elif impl == "prefix_kv":
            n, keys, extra = n0, n0 + p, 2.0 * p * d * d
        else:
            raise ValueError(f"impl {impl!r}: accepted tokens, prefix_kv")
        q = 1 if last else n
        macs += extra + 2 * n * d * d + q * d * d  # k, v for every token; q for the queries
        macs += 2 * q * keys * d + q * d * d + 2 * MLP_RATIO * q * d * d  # attention, proj, MLP
    return 2.0 * macs * (2 if train else 1)


def epoch_seconds(p: int, anchor_s: float) -> tuple[float, float]:
    """(training epoch of 800 images, val200 forward) GPU seconds at ``p``, scaled from the anchor."""
    rate = vit_flops(ANCHOR_P, cls_only_last=False) * ANCHOR_IMAGES / anchor_s
    return vit_flops(p) * TRAIN_IMAGES / rate, vit_flops(p, train=False) * VAL_IMAGES / rate


# --- the simulated trainable (pickled by value into the Ray workers) ------------------------------
_WORKER: dict[str, Any] = {}  # per worker process: backbone built?, host splits, device LRU


def _until(t: float) -> None:
    left = t - time.perf_counter()
    if left > 0:
        time.sleep(left)


def sim_trainable(config: dict[str, Any], spec_json: str, sim: dict[str, Any]) -> None:
    """One trial as ``run_trial`` runs it, compute replaced by waits (see the module docstring)."""
    import numpy as np
    import ray
    import torch
    from ray import tune

    from vptsearch.data._loader import DEVICE_CACHE_SIZE
    from vptsearch.search._trainable import TuneReporter, _spec
    from vptsearch.train import (
        DIVERGENCE_CHECK_EVERY,
        _cpu,
        _host_copy,
        build_optimizer,
        checkpoint_epochs,
        lr_at,
    )

    t_start = time.time()
    now = time.perf_counter
    spec, old = _spec(spec_json), sim["mode"] == "baseline"
    tr = spec.training
    b: dict[str, float] = defaultdict(float)
    timings_file = Path(sim["timings_dir"]) / f"{tune.get_context().get_trial_id()}.json"

    # the slot is the simulated GPU Ray gave the trial: the same 16 across a launch's Tuners
    slot = next(iter(ray.get_gpu_ids()), os.getpid())
    final = config.get("phase", "search") == "final"  # trains on train+val, tests once at the end
    train_images = TRAIN_IMAGES + (VAL_IMAGES if final else 0)

    def flush() -> None:  # after every report: a trial stopped by ASHA never returns from one
        b["end"] = time.time()
        timings_file.write_text(json.dumps({"start": t_start, "pid": os.getpid(), "slot": slot,
                                            "phase": config.get("phase", "search"), **b}))  # fmt: skip

    # model build: the backbone once per worker, old: a deep copy + H2D per trial; new: shared
    t0 = now()
    torch.set_num_threads(1)
    first = not _WORKER.get("backbone")
    if first:
        time.sleep(sim["backbone_build_s"] + (0 if old else sim["backbone_h2d_s"]))
        _WORKER["backbone"] = True
    if old:
        time.sleep(sim["backbone_copy_s"] + sim["backbone_h2d_s"])
    p, n_cls = int(config["prompt.length"]), 100
    torch.manual_seed(int(config.get("seed", 0)))
    prompts = torch.nn.Parameter(torch.empty(DEPTH, p, DIM).uniform_(-0.06, 0.06))
    head = torch.nn.Linear(DIM, n_cls)
    params = [prompts, *head.parameters()]
    base_lr, wd = float(config["optim.base_lr"]), float(config["optim.weight_decay"])
    opt, lr = build_optimizer(params, spec, base_lr, wd)
    for q in params:  # one step's momentum buffers: the optimizer state a checkpoint carries
        q.grad = torch.zeros_like(q)
    opt.step()
    b["model_build"] += now() - t0
    if first:  # the backbone and the process's first optimizer (torch's lazy imports): once per worker
        b["first_touch"] += now() - t0

    # data ready: host decode once per worker and split; new: the uint8 split on the device (LRU)
    t0 = now()
    host = _WORKER.setdefault("host", set())
    dev: OrderedDict[tuple[str, str], None] = _WORKER.setdefault("device", OrderedDict())
    if final and ("test", config["task"]) not in _WORKER.setdefault("tests", set()):
        # the test split: decoded by the worker (a VTAB-1k test split, up to 22 000 images at 224 px,
        # is far over the split store's share of a node's object store: see _split_store), once
        t1 = now()
        time.sleep(TEST_IMAGES * sim["decode_s_per_image"])
        b["split_decodes"] += 1
        b["first_touch"] += now() - t1
        _WORKER["tests"].add(("test", config["task"]))
    for split, n in (("train800", TRAIN_IMAGES), ("val200", VAL_IMAGES)):
        key = (config["task"], split)
        if key not in host:
            t1 = now()
            if sim.get("splits") is None:
                b["split_decodes"] += 1
                time.sleep(n * sim["decode_s_per_image"])
            else:  # the launch's split store: the first worker decodes, the others map its copy

                def decode(n: int = n) -> tuple[Any, Any]:
                    b["split_decodes"] += 1
                    time.sleep(n * sim["decode_s_per_image"])
                    return np.zeros((n, 3, 224, 224), np.uint8), np.zeros(n, np.int64)

                # kept, as load_split's per-process cache keeps it (it pins the shared copy)
                arrays = _WORKER.setdefault("arrays", {})
                arrays[key] = sim["splits"].fetch(f"{config['task']}/{split}", decode)
            b["split_first_touches"] += 1
            b["first_touch"] += now() - t1
            host.add(key)
        if not old:
            if key in dev:
                dev.move_to_end(key)
            else:
                time.sleep(n * IMAGE_BYTES / H2D_BYTES_PER_S)
                dev[key] = None
                while len(dev) > DEVICE_CACHE_SIZE:
                    dev.popitem(last=False)
    b["data"] += now() - t0
    b["data_ready"] += now() - t0

    step_s, eval_s = epoch_seconds(p, sim["anchor_epoch_s"])
    batch = tr.batch_size
    sizes = [min(batch, train_images - s) for s in range(0, train_images, batch)]
    total_steps, warmup = tr.epochs * len(sizes), tr.warmup_epochs * len(sizes)
    quality = (zlib.crc32(f"{config['prompt.length']},{config['optim.base_lr']},"
                          f"{config['optim.weight_decay']}".encode()) % 1000) / 1000.0  # fmt: skip
    checkpointed = checkpoint_epochs(spec)
    reporter, history = TuneReporter(tr.report_every_s), []
    for epoch in range(1, tr.epochs + 1):
        t_epoch, before = now(), b["data"] + b["host_sync"]
        gpu = now()  # when the simulated GPU queue drains
        for i, n in enumerate(sizes):
            for g in opt.param_groups:
                step = (epoch - 1) * len(sizes) + i
                g["lr"] = lr_at(step, base=lr, warmup_steps=warmup, total_steps=total_steps)
            work = step_s * n / TRAIN_IMAGES
            if old:  # the host prepares the batch while the GPU idles, then waits for loss and acc
                t0 = now()
                time.sleep(n * sim["normalise_s_per_image"] + n * IMAGE_BYTES * 4 / H2D_BYTES_PER_S)
                b["data"] += now() - t0
                gpu = now() + work
                _until(gpu)
                t0 = now()
                time.sleep(2 * SYNC_S)
                b["host_sync"] += now() - t0
            else:
                gpu = max(gpu, now()) + work
                if (i + 1) % DIVERGENCE_CHECK_EVERY == 0:
                    _until(gpu)
        _until(gpu)
        if not old:
            t0 = now()
            time.sleep(SYNC_S)  # the epoch's one read of the loss/accuracy sums and divergence flag
            b["host_sync"] += now() - t0
        train_s = step_s * train_images / TRAIN_IMAGES
        b["compute"] += train_s
        b["train_loop_other"] += now() - t_epoch - train_s - (b["data"] + b["host_sync"] - before)
        val = quality * (1 - math.exp(-epoch / 20))
        metrics = {"phase": config.get("phase", "search"), "seed": int(config.get("seed", 0)),
                   "tuned_percent": 0.1, "epoch": epoch, "lr": opt.param_groups[0]["lr"], "diverged": 0,
                   "train_loss": 2.0 - val, "train_acc": val}  # fmt: skip
        if not final or epoch == tr.epochs:
            # search: val200 every epoch (one batch of eval_batch_size 256); final: the test split
            # once, from the host (as _trial_loop keeps it)
            images = TEST_IMAGES if final else VAL_IMAGES
            t_eval, gpu_s = now(), eval_s * images / VAL_IMAGES
            if old:  # host normalise + copy while the GPU waits (counted as eval bookkeeping)
                time.sleep(images * (sim["normalise_s_per_image"] + IMAGE_BYTES * 4 / H2D_BYTES_PER_S))
            t0 = now()
            if final and not old:  # the uint8 test split's copy to the device
                time.sleep(images * IMAGE_BYTES / H2D_BYTES_PER_S)
            copy_s = now() - t0
            b["data"] += copy_s
            _until(now() + gpu_s)
            time.sleep(2 * SYNC_S if old else SYNC_S)
            b["compute"] += gpu_s
            b["eval_bookkeeping"] += now() - t_eval - gpu_s - copy_s
            metrics.update({"test_acc": val, "test_loss": 2.0 - val} if final else
                           {"val_acc": val, "val_loss": 2.0 - val})  # fmt: skip
        metrics["epoch_seconds"] = now() - t_epoch
        history.append(metrics)
        t0 = now()
        b["reports"] += 1
        if epoch in checkpointed:
            state = {"trained": _cpu({"prompt_tokens": prompts, "head.weight": head.weight,
                                      "head.bias": head.bias}),
                     "optimizer": _host_copy(opt.state_dict()), "epoch": epoch,
                     "history": list(history), "init": {"strategy": "random"}}  # fmt: skip
            b["checkpoints"] += 1
            flush()
            reporter.report(metrics, state)
            b["checkpoint"] += now() - t0
        else:
            flush()
            reporter.report(metrics)  # held by the throttle, or a round trip through the driver
            b["report"] += now() - t0
        flush()


# --- calibration: the host-side costs the trainable replays, measured here -------------------------
def calibrate(model_name: str, to_vit_b: bool = True) -> dict[str, float]:
    """Single-thread times of what the old and new engine do on the host (see the module docstring)."""
    import io

    import numpy as np
    import timm
    import torch
    from PIL import Image

    from vptsearch.data._codec import decode_image
    from vptsearch.data._transforms import Normalise
    from vptsearch.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def best(fn: Any, n: int = 3) -> float:
            """Least CPU time of this thread over ``n`` calls: what a core of its own would take (the
            wall time here depends on how many other jobs share the two cores)."""
            out = []
            for _ in range(n):
                t = time.thread_time()
                fn()
                out.append(time.thread_time() - t)
            return min(out)

        t = time.thread_time()
        vit = timm.create_model(model_name, pretrained=False, num_classes=0)
        state = {k: v.clone() for k, v in vit.state_dict().items()}
        create_s = time.thread_time() - t
        load_s = best(lambda: vit.load_state_dict(state), 1)
        vit.eval()  # as load_backbone returns it: eval mode, parameters still require grad
        old_build = best(lambda: build_model(vit, 100, "vpt", prompt_length=50, depth="deep"), 2)
        for q in vit.parameters():
            q.requires_grad_(False)
        new_build = best(lambda: build_model(vit, 100, "vpt", prompt_length=50, depth="deep"), 2)
        n_params = sum(q.numel() for q in vit.parameters())
        # a smaller --calibration-model: scale to ViT-B's size (not in --smoke: seconds matter there)
        scale = 86_000_000 / n_params if to_vit_b else 1.0
        images = torch.randint(0, 256, (256, 3, 224, 224), dtype=torch.uint8)
        norm = Normalise((0.5,) * 3, (0.5,) * 3)
        idx = torch.randperm(256)[:64]
        normalise = best(lambda: norm(images[idx]), 5) / 64
        rng = np.random.default_rng(0)
        img = (rng.random((224, 224, 3)) * 64 + np.linspace(0, 180, 224)[None, :, None]).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        decode = best(lambda: [decode_image(data) for _ in range(20)], 3) / 20
    finally:
        torch.set_num_threads(threads)
    return {
        "backbone_build_s": (create_s + load_s) * scale,
        "backbone_copy_s": max(0.0, old_build - new_build) * scale,
        "build_model_shared_s": new_build,
        "backbone_h2d_s": BACKBONE_BYTES / H2D_BYTES_PER_S,
        "normalise_s_per_image": normalise,
        "decode_s_per_image": decode,
        "calibration_model": model_name,
        "calibration_scale_to_vit_b": scale,
    }


# --- the launch path -------------------------------------------------------------------------------
def _load(name: str) -> Any:
    """A sibling benchmark as a module (by path, not in sys.modules: Ray pickles it by value)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _swapped_trainable(sim: dict[str, Any]) -> Any:
    """``_trainable.make_trainable`` -> ``sim_trainable``, bound and resourced like the real one."""
    from ray import tune

    def make(spec: Any, backbone: Any = None, splits: Any = None) -> Any:  # make_trainable's signature
        bound = tune.with_parameters(
            sim_trainable, spec_json=json.dumps(spec.to_dict()), sim={**sim, "splits": splits}
        )
        return tune.with_resources(bound, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})

    return _load("bench_platform_overhead").swapped_make_trainable(make)


def _trials_per_task(args: argparse.Namespace, mode: str) -> int:
    return int(args.baseline_trials_per_task if mode == "baseline" else args.trials_per_task)


def _spec(args: argparse.Namespace, mode: str, root: Path, storage: str | None) -> Any:
    from vptsearch.spec import spec_from_dict

    return spec_from_dict({
        "name": "bench_gpu_sim",
        "suite": [f"sim/task{i:02d}" for i in range(args.tasks)],
        "run_dir": str(root / "runs"),
        "method": "vpt",
        "params": {
            "prompt.depth": "deep",
            "prompt.length": {"choice": [1, 50, 200]},
            "optim.base_lr": {"choice": [10, 5, 2.5, 1, 0.5, 0.25]},
            "optim.weight_decay": {"choice": [0.001, 0.0001, 0.0]},
        },
        "search": {"algorithm": "tpe", "max_concurrent": args.slots,
                   "trials_per_task": _trials_per_task(args, mode),
                   "seed": 0, "n_startup_trials": 5},
        "scheduler": {"type": "asha", "grace_period": args.grace, "reduction_factor": 3},
        # old behaviour: a checkpoint with every epoch's report
        "training": {"epochs": args.epochs, "warmup_epochs": max(1, args.epochs // 10), "batch_size": 64,
                     "image_size": 224, "checkpoint_every": 1 if mode == "baseline" else 10,
                     "report_every_s": 0.0 if mode in OLD_PLATFORM else args.report_every_s},
        "resources": {"cpu": 1, "gpu": 1},
        "storage": {"path": storage} if storage else {},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "bench_gpu_sim",
                     "artifact_location": str(root / "mlartifacts")},
    })  # fmt: skip


def one_run(args: argparse.Namespace, mode: str, storage: str, calib: dict[str, Any],
            s3_uri: str | None) -> dict[str, Any]:  # fmt: skip
    """A launch's search (and final) phase with the simulated trainable; its wall time and where it went."""
    from ray.tune.execution.tune_controller import TuneController

    from vptsearch.search import _phases
    from vptsearch.search._final_queue import FinalsAfterSearch
    from vptsearch.search._metrics import MetricsCallback
    from vptsearch.search._scheduler import PerTaskScheduler, build_scheduler
    from vptsearch.search._searcher import MultiTaskSearcher, build_searcher, trial_status
    from vptsearch.search._split_store import start_split_store
    from vptsearch.search._storage import launch_storage
    from vptsearch.search._tracking import (
        ProgressCallback,
        Tracker,
        TrackingCallback,
        artifact_location,
        check_tracking_uri,
    )

    timed = _load("bench_platform_overhead")._timed_methods
    _costs = _load("_driver_costs")
    driver: dict[str, float] = defaultdict(float)
    targets = {
        # the search's searcher (inside FinalsAfterSearch in mode new: its own work is counted there)
        "searcher": [(MultiTaskSearcher, m) for m in ("suggest", "on_trial_result", "on_trial_complete")],
        "scheduler": [(PerTaskScheduler, m) for m in ("on_trial_result", "on_trial_complete",
                                                       "choose_trial_to_run")],
        "callbacks": [(TrackingCallback, m) for m in ("on_trial_start", "on_trial_result",
                                                      "on_trial_complete")]
        + [(MetricsCallback, "on_trial_result"), (ProgressCallback, "on_trial_complete")],
        "experiment_snapshot": [(TuneController, "save_to_dir")],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vptsearch-gpusim-") as tmp:
        root = Path(tmp)
        spec = _spec(args, mode, root, f"{s3_uri}/{mode}" if storage == "s3" else None)
        tasks = list(spec.suite)
        run_dir = root / "runs" / spec.name / mode
        run_dir.mkdir(parents=True)
        uri = check_tracking_uri(spec.tracking.uri)
        launch_id = f"{spec.name}/{mode}"
        tracker = Tracker(uri, spec.experiment, artifact_location(spec.tracking.artifact_location, uri),
                          launch_id, run_dir=run_dir)  # fmt: skip
        tracker.launch_run(launch_id)
        parents = {t: tracker.task_run(t, "sim") for t in tasks}
        store = launch_storage(spec, run_dir)
        timings = root / "timings"
        timings.mkdir()
        sim = {**calib, "mode": mode, "anchor_epoch_s": args.epoch_seconds, "timings_dir": str(timings)}
        searcher: Any = build_searcher(spec, tasks, journal=run_dir / "optuna.journal")
        budget = sum(searcher.budgets.values())
        epochs, seeds = spec.training.epochs, spec.protocol.final_seeds
        # new: each task's finals in the search's Tuner once its search ends; the other modes: a
        # second Tuner after the whole search (the launch before that); --search-only: no finals
        in_search = mode == "new" and not args.search_only
        finals = len(tasks) * len(seeds) if in_search else 0
        if in_search:
            searcher = FinalsAfterSearch(searcher, seeds, epochs)

        def callbacks(phase: str, n: int, finals: int = 0) -> list:
            return [MetricsCallback(phase, epochs, tasks),
                    TrackingCallback(uri, spec.experiment, None, launch_id, parents, epochs, resume=False,
                                     run_dir=run_dir),
                    ProgressCallback(n, epochs, phase, finals)]  # fmt: skip
        # the old launch path: Tune prunes checkpoints (num_to_keep=1) and stages one trial at a time
        old_platform = mode in OLD_PLATFORM
        # new: the launch's decoded-split store, sized as on a GPU node (a quarter of its object store
        # holds every split of 19 tasks); the old path decoded per worker
        splits = None if old_platform else start_split_store(capacity_bytes=SPLIT_STORE_BYTES)
        setup = _phases.TuneSetup(spec, run_dir, store, tune_num_to_keep=1 if old_platform else None,
                                  max_pending_trials=1 if old_platform else None, splits=splits)  # fmt: skip
        events: dict[str, Any] = {}
        with _swapped_trainable(sim), timed(targets, driver), contextlib.redirect_stdout(sys.stderr), \
                _costs.driver_events(events):  # fmt: skip
            t0 = time.time()
            cbs, n = callbacks("search", budget, finals), budget + finals
            results = list(_phases.run_tuner(setup, "search", searcher, build_scheduler(spec), n, cbs))
            if not in_search and not args.search_only:
                results += _final_tuner(setup, results, callbacks)
            wall = time.time() - t0
        if splits is not None:  # as a launch ends: else its splits stay pinned into the next mode's run
            splits.close()
        t_drain = time.perf_counter()
        unsynced = tracker.close()
        drain_s = time.perf_counter() - t_drain
        statuses: dict[str, int] = defaultdict(int)
        for r in results:
            statuses[trial_status(r.metrics, epochs, r.error is not None)] += 1
        trials = [json.loads(f.read_text()) for f in timings.glob("*.json")]
        stored = _stored_bytes(store)
    errored = sum(1 for r in results if r.error is not None)
    out = _account(args, mode, storage, wall, t0, trials, dict(statuses), dict(driver), drain_s, unsynced,
                   errored, stored)  # fmt: skip
    costs = _costs.per_event(events, len(trials))
    per_s = round(costs["results"] / max(1e-9, wall), 1)
    out["driver_costs"] = {**costs, "results_per_s": per_s, "events": events}
    snap = out["driver_components_s"].get("experiment_snapshot", 0.0)
    out["snapshot_share_of_driver"] = round(snap / max(1e-9, wall), 4)
    return out


def _final_tuner(setup: Any, search_results: list, callbacks: Callable[[str, int], list]) -> list:
    """The final phase in its own Tuner after the whole search, as the launch ran it before each
    task's finals started in the search's Tuner (``Launch.final``)."""
    from ray.tune.schedulers import FIFOScheduler

    from vptsearch.search import _phases
    from vptsearch.search._protocol import final_configs, select
    from vptsearch.search._searcher import MultiTaskSearcher

    spec = setup.spec
    records = _phases.trial_records(search_results, spec.training.epochs)
    fixed = final_configs(select(records, list(spec.suite)), spec.protocol.final_seeds)
    n_final = sum(len(c) for c in fixed.values())
    searcher = MultiTaskSearcher(None, {t: len(c) for t, c in fixed.items()}, spec.search.max_concurrent,
                                 fixed=fixed, metric=None)  # fmt: skip
    final_cbs = callbacks("final", n_final)
    return list(_phases.run_tuner(setup, "final", searcher, FIFOScheduler(), n_final, final_cbs))


def _stored_bytes(store: Any) -> int:
    from pyarrow import fs as pafs

    fs, path = (store.fs, store.path) if store.fs is not None else (pafs.LocalFileSystem(), store.path)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


BUCKETS = ("compute", "model_build", "data", "host_sync", "eval_bookkeeping", "checkpoint", "report",
           "train_loop_other")  # fmt: skip


def _by_phase(trials: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in trials:
        out[t.get("phase", "search")].append(t)
    return out


def _account(args: argparse.Namespace, mode: str, storage: str, wall: float, t0: float,
             trials: list[dict[str, Any]], statuses: dict[str, int], driver: dict[str, float],
             drain_s: float, unsynced: int, errored: int, stored: int) -> dict[str, Any]:  # fmt: skip
    """Slot-seconds -> fractions (they sum to 1), efficiency, per-trial fixed cost."""
    slot_s = wall * args.slots
    sums = {k: sum(t.get(k, 0.0) for t in trials) for k in BUCKETS}
    busy = sum(t["end"] - t["start"] for t in trials)
    first = defaultdict(lambda: math.inf)
    for t in trials:  # per slot (a simulated GPU): the same 16 across the search and final Tuners
        first[t["slot"]] = min(first[t["slot"]], t["start"])
    # slots whose worker never ran a trial wait from t0 to the end; the others until their first start
    startup = sum(f - t0 for f in first.values()) + (args.slots - len(first)) * wall
    startup = max(0.0, min(startup, slot_s - busy))
    sums["other_in_trial"] = busy - sum(sums.values())
    sums["worker_startup"] = startup
    # a slot idles between its trials (the driver's handling of one trial's end and the next's
    # start), then after its last trial until the run ends (nothing left to start: the search's tail)
    by_slot: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in trials:
        by_slot[t["slot"]].append(t)
    gaps = []
    for runs in by_slot.values():
        runs.sort(key=lambda t: t["start"])
        gaps += [max(0.0, b["start"] - a["end"]) for a, b in itertools.pairwise(runs)]
    sums["between_trials"] = min(sum(gaps), slot_s - busy - startup)
    sums["tail"] = slot_s - busy - startup - sums["between_trials"]
    n = len(trials)
    gaps.sort()
    # per-trial fixed cost: model build + data ready (+ init: random, in model_build); first_touch
    # is the part paid once per worker (backbone) or per worker and task (split decode)
    fixed = sorted(t["model_build"] + t["data_ready"] for t in trials)
    fixed_warm = sorted(t["model_build"] + t["data_ready"] - t.get("first_touch", 0.0) for t in trials)
    return {
        "mode": mode,
        "storage": storage,
        "trials": n,
        "trials_by_phase": dict(sorted(Counter(t.get("phase", "search") for t in trials).items())),
        "statuses": statuses,
        "errored": errored,
        "wall_s": round(wall, 2),
        "compute_s": round(sums["compute"], 2),
        "efficiency": round(sums["compute"] / slot_s, 4),
        "steady_efficiency": round(sums["compute"] / max(1e-9, slot_s - startup), 4),
        # also without the tail: while trials were still waiting to start
        "steady_efficiency_without_tail": round(
            sums["compute"] / max(1e-9, slot_s - startup - sums["tail"]), 4),
        "idle_between_trials_s": {
            "median": round(statistics.median(gaps), 4) if gaps else None,
            "mean": round(statistics.fmean(gaps), 4) if gaps else None,
            "p90": round(gaps[int(0.9 * (len(gaps) - 1))], 4) if gaps else None,
        },
        "breakdown": {k: round(v / slot_s, 4) for k, v in sums.items()},
        "breakdown_s_per_trial": {k: round(v / max(1, n), 4) for k, v in sums.items()},
        # the in-trial buckets by phase: a final trial trains 100 epochs on train+val
        "in_trial_s_per_trial_by_phase": {
            ph: {k: round(statistics.fmean(t.get(k, 0.0) for t in ts), 4) for k in BUCKETS}
            for ph, ts in sorted(_by_phase(trials).items())
        },
        "epochs_per_trial": round(sum(t["reports"] for t in trials) / max(1, n), 2),
        "checkpoints_per_trial": round(sum(t.get("checkpoints", 0) for t in trials) / max(1, n), 2),
        # a worker's first use of a task's split, and how many of those decoded it (new: the rest
        # mapped the launch's shared copy)
        "split_first_touches": int(sum(t.get("split_first_touches", 0) for t in trials)),
        "split_decodes": int(sum(t.get("split_decodes", 0) for t in trials)),
        "fixed_cost_s_per_trial": {
            "median": round(statistics.median(fixed), 4) if fixed else None,
            "mean": round(statistics.fmean(fixed), 4) if fixed else None,
            "max": round(max(fixed), 4) if fixed else None,
            "median_without_first_touch": round(statistics.median(fixed_warm), 4) if fixed else None,
            "first_touch_mean": round(statistics.fmean(t.get("first_touch", 0.0) for t in trials), 4)
            if trials else None,
        },
        "driver_components_s": {k: round(v, 3) for k, v in sorted(driver.items())},
        "storage_bytes_at_end": stored,
        "mlflow_drain_s": round(drain_s, 3),
        "mlflow_unsynced": unsynced,
    }


def _project(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The run's measured per-event costs projected to an 8-GPU node, 2 trials per GPU, a core per
    trial (``_driver_costs.projection``). The trial's host work is what it measured here on shared
    cores (an upper bound); its checkpoint bucket (torch.save, persist, and its result's wait on
    the driver) counts whole as fixed host work."""
    per_trial = run["breakdown_s_per_trial"]
    epochs = max(1e-9, run["epochs_per_trial"])
    host = sum(per_trial[k] for k in ("data", "host_sync", "eval_bookkeeping", "train_loop_other"))
    fixed = run["fixed_cost_s_per_trial"]["median_without_first_touch"] or 0.0
    return _load("_driver_costs").projection(
        run["driver_costs"], slots=16, epochs_per_trial=epochs, gpu_s_per_epoch=per_trial["compute"] / epochs,
        worker_s_per_epoch=host / epochs, worker_s_per_trial=fixed + per_trial["checkpoint"],
    )


# --- S3: moto's server in a process of its own ------------------------------------------------------
@contextlib.contextmanager
def moto_s3(bucket: str = "vptsearch-bench"):
    """``s3://bucket`` on a moto server (127.0.0.1); AWS variables set for this process and Ray's
    workers (started later, they inherit them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import time; from moto.server import ThreadedMotoServer; "
            f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start(); "
            "time.sleep(1e9)")
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=quiet, stderr=quiet)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto S3 server did not start") from None
                time.sleep(0.2)
        from pyarrow import fs

        fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                        access_key="test", secret_key="test", allow_bucket_creation=True).create_dir(bucket)
        yield f"s3://{bucket}/gpu-sim"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="2 slots, 2 tasks x 2 trials of 6 epochs, local storage (unless --storage)")
    ap.add_argument("--slots", type=int, default=16, help="concurrent trials (simulated GPUs)")
    ap.add_argument("--tasks", type=int, default=19)
    ap.add_argument("--trials-per-task", type=int, default=27)
    ap.add_argument("--baseline-trials-per-task", type=int, default=5,
                    help="the old engine's run (its per-epoch costs make it ~5x slower to simulate)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--grace", type=int, default=10, help="ASHA grace period (reduction factor 3)")
    ap.add_argument("--epoch-seconds", type=float, default=round(ANCHOR_EPOCH_S, 4),
                    help="GPU seconds of an 800-image epoch at p = 50 (the anchor)")
    ap.add_argument("--storage", default=None,
                    help="comma-separated: local, s3 (default both; --smoke: local)")
    ap.add_argument("--modes", default="before,new",
                    help="comma-separated: baseline, before, final_tuner, new (see MODES)")
    ap.add_argument("--report-every-s", type=float, default=5.0,
                    help="new: training.report_every_s (the trial's progress-result interval)")
    ap.add_argument("--calibration-model", default="vit_base_patch16_224")
    ap.add_argument("--search-only", action="store_true",
                    help="the search phase alone, as measured before finals ran in it (no final trials)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.slots, args.tasks, args.trials_per_task, args.epochs, args.grace = 2, 2, 2, 6, 2
        args.baseline_trials_per_task = 2
        args.calibration_model = "vit_tiny_patch16_224"
        args.storage = args.storage or "local"  # S3 only when asked for (two more Tuner runs)
    args.storages = [s.strip() for s in (args.storage or "local,s3").split(",") if s.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    for flag, got, ok in (("--storage", args.storages, STORAGES), ("--modes", args.mode_list, MODES)):
        bad = [g for g in got if g not in ok] or ([] if got else [""])
        if bad:
            ap.error(f"{flag} {bad[0]!r}: accepted: {', '.join(ok)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    t_all = time.perf_counter()
    load = os.getloadavg()[0]
    calib = calibrate(args.calibration_model, to_vit_b=not args.smoke)
    import ray

    runs: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        s3_uri = stack.enter_context(moto_s3()) if "s3" in args.storages else None
        started_here = not ray.is_initialized()
        if started_here:  # our own cluster: --slots CPUs and GPUs (logical), workers inherit AWS_*
            ray.init(address="local", num_cpus=args.slots, num_gpus=args.slots, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False)  # fmt: skip
            stack.callback(ray.shutdown)
        for storage in args.storages:
            for mode in args.mode_list:
                print(f"== {storage} {mode}", file=sys.stderr, flush=True)
                key = f"{storage}_{mode}"
                runs[key] = one_run(args, mode, storage, calib, s3_uri)
                # each run's figures as soon as it ends: an interrupted long run keeps what it measured
                print(json.dumps({key: runs[key]}), file=sys.stderr, flush=True)
    p_epochs = {f"p{p}": [round(v, 4) for v in epoch_seconds(p, args.epoch_seconds)] for p in (1, 50, 200)}
    trial_s = args.epoch_seconds * 100
    met = {}
    for storage in args.storages:
        new = runs.get(f"{storage}_new")
        if new:
            met[f"{storage}_efficiency"] = new["steady_efficiency"] >= TARGETS[storage]
    fixed_new = runs.get(f"{args.storages[0]}_new", {}).get("fixed_cost_s_per_trial", {}).get("mean")
    if fixed_new is not None:
        met["fixed_cost"] = fixed_new <= FIXED_COST_TARGET * trial_s
    import mlflow
    import torch

    projections = {k: _project(r, args) for k, r in runs.items()}
    if "local_new" in projections:
        met["projection_8gpu_node"] = projections["local_new"]["efficiency"] >= PROJECTION_TARGET
    result = {
        "benchmark": "gpu_sim",
        "smoke": args.smoke,
        "slots": args.slots,
        "tasks": args.tasks,
        "trials_per_run": {m: args.tasks * _trials_per_task(args, m) for m in args.mode_list},
        "epochs": args.epochs,
        "asha": {"grace_period": args.grace, "reduction_factor": 3},
        "anchor": {"epoch_s_p50_800_images": args.epoch_seconds, "peak_flops": PEAK_FLOPS, "mfu": MFU,
                   "train_gflop_per_image_p50_issue": round(vit_flops(50, cls_only_last=False) / 1e9, 1),
                   "train_gflop_per_image": {f"p{p}": round(vit_flops(p) / 1e9, 1) for p in (1, 50, 200)},
                   "gpu_s_train_epoch_and_val200": p_epochs, "h2d_bytes_per_s": H2D_BYTES_PER_S,
                   "sync_s": SYNC_S, "trial_s_p50_100_epochs": round(trial_s, 2)},
        "calibration": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in calib.items()},
        "runs": runs,
        "efficiency": {k: r["efficiency"] for k, r in runs.items()},
        "steady_efficiency": {k: r["steady_efficiency"] for k, r in runs.items()},
        "targets": {"efficiency_local": TARGETS["local"], "efficiency_s3": TARGETS["s3"],
                    "fixed_cost_s": round(FIXED_COST_TARGET * trial_s, 3)},
        "projection_8gpu_node_16_slots": projections,
        "meets_target": met,
        "seconds": round(time.perf_counter() - t_all, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_1min": {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)}},
        "versions": {"ray": ray.__version__, "torch": torch.__version__, "mlflow": mlflow.__version__},
    }
    print(json.dumps(result, indent=2))
    for k, r in runs.items():
        c = r["driver_costs"]
        print(f"{k:<15} efficiency {r['efficiency']:.3f} (steady {r['steady_efficiency']:.3f}) "
              f"{r['trials']} trials in {r['wall_s']:.0f} s; {c['results_per_s']} results/s, driver "
              f"{c['ms_per_result']} ms/result {c['ms_per_trial']} ms/trial; 8-GPU projection "
              f"{projections[k]['efficiency']:.3f}", file=sys.stderr)  # fmt: skip
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
