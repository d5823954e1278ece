"""Mini-batch k-means with k-means++ seeding, in torch (CPU or GPU), deterministic given a seed.

SPT initialises prompts with k-means prototypes of a task's patch tokens; the paper's k-means took
27 days on CUB. Here: k-means++ on a random subsample, then mini-batch updates with per-centre
learning rates 1/count (Sculley 2010), then one full assignment pass to refine the centres. On
1 000 images x 196 tokens x 768 dims this takes seconds per layer on a CPU.
"""

from __future__ import annotations

import torch

from vptsearch._errors import ConfigError


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [n, k] (clamped: the expansion can go slightly negative)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_min_(0)


def _cluster_sums(x: torch.Tensor, assign: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums [k, d] and counts [k] (a one-hot matmul: far faster than index_add_ on CPU)."""
    onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype)
    return onehot.T @ x, onehot.sum(0)


def kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: k rows of ``x`` drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    xx = x.pow(2).sum(1)
    idx = int(torch.randint(n, (1,), generator=gen))
    chosen = [idx]
    d2 = (xx - 2 * x @ x[idx] + xx[idx]).clamp_min_(0)
    for _ in range(1, k):
        probs = d2.double().cpu()
        # All remaining points coincide with a centre: fall back to a uniform draw.
        probs = probs if float(probs.sum()) > 0 else torch.ones_like(probs)
        idx = int(torch.multinomial(probs, 1, generator=gen))
        chosen.append(idx)
        d2 = torch.minimum(d2, (xx - 2 * x @ x[idx] + xx[idx]).clamp_min_(0))
    return x.index_select(0, torch.tensor(chosen, device=x.device))


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    batch_size: int = 4096,
    iters: int = 50,
    init_size: int | None = None,
) -> torch.Tensor:
    """Cluster the rows of ``x`` [n, d] into ``k`` centres [k, d] (float32, on ``x``'s device).

    Raises ``ConfigError`` when there are fewer than ``k`` rows.
    """
    if x.ndim != 2:
        raise ConfigError(f"kmeans expects a [n, d] matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1 or n < k:
        raise ConfigError(f"k-means needs at least k={k} tokens, got {n}; use more images or a smaller k")
    x = x.float()
    gen = torch.Generator().manual_seed(seed)  # CPU generator: same draws on every device
    size = min(n, init_size or max(3 * batch_size, 20 * k))
    sub = x.index_select(0, torch.randperm(n, generator=gen)[:size].to(x.device))
    centers = kmeans_pp(sub, k, gen).clone()
    scale = sub.abs().mean().clamp_min(1e-12)
    counts = torch.zeros(k, device=x.device)
    bs = min(batch_size, n)
    for it in range(iters):
        before = centers.clone() if it % 10 == 9 else None
        batch = x.index_select(0, torch.randint(n, (bs,), generator=gen).to(x.device))
        assign = _sq_dist(batch, centers).argmin(1)
        sums, hits = _cluster_sums(batch, assign, k)
        counts += hits
        # Per-centre step 1/count: centre <- centre + (hits/count) * (batch mean - centre).
        # Masked updates without boolean indexing (index_put is very slow on CPU): lr is 0 where a
        # centre got no points.
        lr = (hits / counts.clamp_min(1)).unsqueeze(1)
        centers += lr * (sums / hits.clamp_min(1).unsqueeze(1) - centers)
        # Converged (typical when the batch is the whole set): stop early; checked every 10 steps
        # so that a GPU is not synchronised on every iteration.
        if before is not None and float((centers - before).abs().max()) <= 1e-6 * float(scale):
            break
    # One full Lloyd step over all points (chunked), keeping empty clusters where they are.
    sums = torch.zeros_like(centers)
    hits = torch.zeros(k, device=x.device)
    for chunk in x.split(16384):
        s, h = _cluster_sums(chunk, _sq_dist(chunk, centers).argmin(1), k)
        sums += s
        hits += h
    centers = torch.where((hits > 0).unsqueeze(1), sums / hits.clamp_min(1).unsqueeze(1), centers)
    return centers
