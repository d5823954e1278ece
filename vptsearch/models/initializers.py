"""Prompt initialisers (one registry): ``random`` (VPT), SPT's ``spt-kmeans`` / ``spt-mean`` /
``spt-max`` / ``spt-sample``, and VPT's ``cls-prototype``.

SPT strategies build the prompts of layer i from the frozen backbone's patch tokens *entering* layer
i on the given training images (deep: one set per layer; shallow: layer 0). Layer 0 tokens are what
enters block 0: patch embedding **with** the positional embedding added (and ``norm_pre`` if the
backbone has one), because that is the space the layer-0 prompts live in. Prefix (CLS/register)
tokens are excluded; only image patch tokens count. Tokens are computed layer by layer over the whole
image set, so memory holds one layer at a time, not all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from vptsearch._errors import ConfigError
from vptsearch._registry import Registry
from vptsearch.models._kmeans import kmeans
from vptsearch.models.tuned import TunedModel

# fn(model, images, labels, seed, batch_size) -> tensor shaped like model.prompt_tokens
Initializer = Callable[[TunedModel, torch.Tensor, "torch.Tensor | None", int, int], torch.Tensor]
INITIALIZERS: Registry[Initializer] = Registry("initialiser")
CLS_PROTOTYPE_MAX = 200  # VPT appendix: k-means the class means to 200 when there are more classes


def list_initializers() -> list[str]:
    return INITIALIZERS.names()


@torch.no_grad()
def layer_patch_tokens(
    model: TunedModel, images: torch.Tensor, num_layers: int, batch_size: int = 64
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(i, tokens [N * T, d])``: the frozen backbone's patch tokens entering block i.

    Rows are image-major (image 0's T tokens in raster order, then image 1's, ...). Runs the plain
    backbone (no prompts) one block at a time over all images.
    """
    device = next(model.backbone.parameters()).device
    npf = model.num_prefix_tokens
    state = [model.embed(b.to(device)) for b in images.split(batch_size)]
    for i in range(num_layers):
        yield i, torch.cat([s[:, npf:] for s in state]).reshape(-1, model.embed_dim)
        if i + 1 < num_layers:
            state = [model.backbone.blocks[i](s) for s in state]


def _per_layer(pick: Callable[[torch.Tensor, int, int, int], torch.Tensor]) -> Initializer:
    """Turn ``pick(tokens [M, d], p, tokens_per_image, seed) -> [p, d]`` into a registry entry."""

    def init(
        model: TunedModel, images: torch.Tensor, labels: Any, seed: int, batch_size: int
    ) -> torch.Tensor:
        assert model.prompt_tokens is not None
        layers, p, _ = model.prompt_tokens.shape
        out = []
        for i, tokens in layer_patch_tokens(model, images, layers, batch_size):
            per_image = tokens.shape[0] // images.shape[0]
            # A different seed per layer, so deep layers don't all sample the same positions.
            out.append(pick(tokens, p, per_image, seed + 1000 * i))
        return torch.stack(out)

    return init


def _need(tokens: torch.Tensor, p: int, what: str) -> None:
    if tokens.shape[0] < p:
        raise ConfigError(
            f"{what} needs at least prompt_length={p} tokens per layer, got {tokens.shape[0]}; "
            f"pass more images or use a smaller prompt_length"
        )


def _sample(tokens: torch.Tensor, p: int, per_image: int, seed: int) -> torch.Tensor:
    _need(tokens, p, "spt-sample")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(tokens.shape[0], generator=gen)[:p].to(tokens.device)
    return tokens.index_select(0, idx)


def _pooled(reduce: str) -> Callable[[torch.Tensor, int, int, int], torch.Tensor]:
    def pick(tokens: torch.Tensor, p: int, per_image: int, seed: int) -> torch.Tensor:
        _need(tokens, p, f"spt-{reduce}")
        # Windows of consecutive rows: one image's patch tokens each, or smaller when there are
        # fewer than p images, so that there are always at least p windows to draw from.
        window = max(1, min(per_image, tokens.shape[0] // p))
        n_win = tokens.shape[0] // window
        windows = tokens[: n_win * window].reshape(n_win, window, -1)
        gen = torch.Generator().manual_seed(seed)
        chosen = windows.index_select(0, torch.randperm(n_win, generator=gen)[:p].to(tokens.device))
        return chosen.mean(1) if reduce == "mean" else chosen.amax(1)

    return pick


def _kmeans(tokens: torch.Tensor, p: int, per_image: int, seed: int) -> torch.Tensor:
    _need(tokens, p, "spt-kmeans")
    return kmeans(tokens, p, seed=seed)


INITIALIZERS.add("spt-sample", _per_layer(_sample))
INITIALIZERS.add("spt-mean", _per_layer(_pooled("mean")))
INITIALIZERS.add("spt-max", _per_layer(_pooled("max")))
INITIALIZERS.add("spt-kmeans", _per_layer(_kmeans))


@INITIALIZERS.register("random")
def _random(model: TunedModel, images: Any, labels: Any, seed: int, batch_size: int) -> torch.Tensor:
    assert model.prompt_tokens is not None
    v = model.random_init_bound()
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(model.prompt_tokens.shape, generator=gen) * (2 * v) - v


@INITIALIZERS.register("cls-prototype")
@torch.no_grad()
def _cls_prototype(
    model: TunedModel, images: torch.Tensor, labels: torch.Tensor | None, seed: int, batch_size: int
) -> torch.Tensor:
    """Class-mean pre-logit features (final-norm CLS, or pooled tokens) of the frozen backbone, the
    same prototypes for every prompted layer; with more than 200 classes, k-means them to 200."""
    assert model.prompt_tokens is not None
    if labels is None:
        raise ConfigError("cls-prototype needs labels for the images")
    labels = labels.long().cpu()
    classes = model.num_classes
    if labels.numel() != images.shape[0] or labels.min() < 0 or labels.max() >= classes:
        raise ConfigError(f"cls-prototype needs one label in [0, {classes}) per image")
    want = min(classes, CLS_PROTOTYPE_MAX)
    p = model.prompt_length
    if p != want:
        raise ConfigError(
            f"cls-prototype needs prompt_length == number of classes (capped at {CLS_PROTOTYPE_MAX}): "
            f"expected {want}, got {p}"
        )
    missing = sorted(set(range(classes)) - set(labels.tolist()))
    if missing:
        raise ConfigError(f"cls-prototype needs images of every class; none for classes {missing[:10]}")
    device = next(model.backbone.parameters()).device
    feats = []
    for b in images.split(batch_size):
        feats.append(model.pool(_plain_tokens(model, b.to(device)), 0).float().cpu())
    f = torch.cat(feats)
    means = torch.zeros(classes, f.shape[1]).index_add_(0, labels, f) / torch.bincount(
        labels, minlength=classes
    ).unsqueeze(1)
    protos = means if classes <= CLS_PROTOTYPE_MAX else kmeans(means, CLS_PROTOTYPE_MAX, seed=seed)
    return protos.unsqueeze(0).expand(model.prompt_tokens.shape[0], -1, -1)


def _plain_tokens(model: TunedModel, x: torch.Tensor) -> torch.Tensor:
    """Final-norm tokens of the plain frozen backbone (no prompts)."""
    return model.backbone.norm(model.backbone.blocks(model.embed(x)))


def initialize_prompts(
    model: TunedModel,
    strategy: str,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Overwrite ``model.prompt_tokens`` in place with ``strategy``; return a summary dict.

    ``images``: float [N, 3, H, W], already normalised for the backbone (not needed for ``random``).
    ``labels``: int [N], needed for ``cls-prototype``. Deterministic given ``seed``.
    """
    fn = INITIALIZERS.get(strategy)
    if model.prompt_tokens is None:
        raise ConfigError(
            f"initialiser {strategy!r} needs a prompted model (method 'vpt'), got {model.method!r}"
        )
    if strategy != "random":
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < 1:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(
                f"initialiser {strategy!r} needs images as a float [N, 3, H, W] tensor, got {shape}"
            )
        if not images.is_floating_point():
            raise ConfigError(
                f"initialiser {strategy!r} needs normalised float images, got dtype {images.dtype}"
            )
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        values = fn(model, images, labels, seed, batch_size)  # type: ignore[arg-type]
    finally:
        model.train(was_training)
    with torch.no_grad():
        model.prompt_tokens.copy_(values.to(model.prompt_tokens))
    return {
        "strategy": strategy,
        "layers": int(model.prompt_tokens.shape[0]),
        "prompt_length": model.prompt_length,
        "images": 0 if images is None else int(images.shape[0]),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 4),
    }
