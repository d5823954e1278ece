"""Peak memory of importing a large image folder: bounded by a shard, not by the folder's size.

    python benchmarks/bench_import_memory.py            # 50 000 images (and 5 000 beside them)
    python benchmarks/bench_import_memory.py --smoke    # a few hundred, for CI: same JSON shape

Issue 31's target: peak RSS importing a 50 000-image folder <= 1 GB. Each import runs as its own
``vptsearch data ...`` process (the CLI a user runs) and its peak RSS is the kernel's ``ru_maxrss``
of that child (``os.wait4``), so nothing of this process or of an earlier import is counted. Both
importers are measured on the same images: ``import-folder`` (one folder per class, a seeded
split) and ``import-vtab`` (list files ``train.txt`` / ``test.txt`` naming the same files). Each
runs at a tenth of the size and at the full size, side by side: a bounded import has the same peak
at both (the JSON's ``growth_mb``), while one that holds its images would grow ~10x.

The images are 64 px noisy gradients saved as PNG (~10 KB each; what an import reads is the file,
so their content matters only for the decode cost). The folder is built once per run in a
temporary directory and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_MB = 1024.0
CLASSES = 10


def write_folder(src: Path, n: int, size: int, seed: int = 0) -> float:
    """``n`` PNGs under ``src/<class>/``, classes round-robin; ``train.txt``/``test.txt`` (4:1)
    list the same files for import-vtab. Returns the seconds spent."""
    from PIL import Image

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    lines: list[str] = []
    for i in range(n):
        label = i % CLASSES
        noise = rng.integers(-20, 21, (size, size, 3))
        img = np.clip(ramp[None, :, None] * (label + 1) / CLASSES + noise, 0, 255).astype(np.uint8)
        rel = f"c{label}/{i:06d}.png"
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(src / rel)
        lines.append(f"{rel} {label}")
    cut = len(lines) * 4 // 5
    (src / "train.txt").write_text("\n".join(lines[:cut]) + "\n")
    (src / "test.txt").write_text("\n".join(lines[cut:]) + "\n")
    return time.perf_counter() - start


def subset(src: Path, dest: Path, n: int) -> None:
    """The first ``n`` images of ``src`` (hard links, same classes) with their list files."""
    lines = [*(src / "train.txt").read_text().splitlines(), *(src / "test.txt").read_text().splitlines()]
    chosen = sorted(lines, key=lambda line: line.split("/", 1)[1])[:n]
    for line in chosen:
        rel = line.split(" ", 1)[0]
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(src / rel, dest / rel)
    cut = len(chosen) * 4 // 5
    (dest / "train.txt").write_text("\n".join(chosen[:cut]) + "\n")
    (dest / "test.txt").write_text("\n".join(chosen[cut:]) + "\n")


def measured(argv: list[str]) -> dict[str, float]:
    """Run ``vptsearch ARGV`` as a child; its peak RSS (MB) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vptsearch.cli", *argv], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"vptsearch {' '.join(argv)} exited {proc.returncode}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - start, 1)}


def import_argv(kind: str, src: Path, root: Path, task: str) -> list[str]:
    if kind == "folder":
        return ["data", "import-folder", str(src), "--task", task, "--root", str(root)]
    return ["data", "import-vtab", str(src), "--task", task, "--root", str(root)]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--smoke", action="store_true", help="300 images: seconds, same JSON shape")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    n = 300 if args.smoke else args.images
    small = max(CLASSES * 5, n // 10)
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        base = Path(tmp)
        full, part = base / "full" / "bench", base / "part" / "bench"
        full.mkdir(parents=True)
        part.mkdir(parents=True)
        build_s = write_folder(full, n, args.size)
        subset(full, part, small)
        on_disk = sum(p.stat().st_size for p in full.rglob("*.png"))
        runs: dict[str, dict[str, dict[str, float]]] = {}
        for kind in ("folder", "vtab"):
            runs[kind] = {}
            for label, src, count in (("small", part, small), ("full", full, n)):
                root = base / f"root-{kind}-{label}"
                r = measured(import_argv(kind, src, root, f"custom/bench_{kind}"))
                r["images"] = count
                r["images_per_s"] = round(count / r["seconds"], 1)
                runs[kind][label] = r
    peak = max(r["peak_rss_mb"] for kind in runs.values() for r in kind.values())
    growth = {k: round(v["full"]["peak_rss_mb"] - v["small"]["peak_rss_mb"], 1) for k, v in runs.items()}
    result = {
        "benchmark": "import_memory",
        "images": n,
        "image_px": args.size,
        "folder_mb": round(on_disk / 2**20, 1),
        "folder_build_s": round(build_s, 1),
        "imports": runs,
        "growth_mb": growth,
        "peak_rss_mb": peak,
        "target_mb": TARGET_MB,
        "meets_target": peak <= TARGET_MB,
        "load_before": load_before,
        "load_after": loadavg(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
