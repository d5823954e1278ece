"""Normalised mutual information between prompts and patch tokens (SPT, Wang et al. 2024, eqs. 7-8).

For one layer with prompts ``P`` [p, d] and the patch tokens ``X`` [n, d] that enter that layer
(all patch tokens of all given images, prefix tokens excluded), each patch token is treated as a
query attending to the prompts:

    q(b | a) = softmax_b(x_a . p_b / sqrt(d)),   p(a) = 1/n,   p(a, b) = q(b | a) / n,
    p(b) = sum_a p(a, b)
    I(X; P) = sum_{a,b} p(a, b) log(p(a, b) / (p(a) p(b)))            (eq. 7)
    NMI = I(X; P) / sqrt(H(X) H(P)),  H(X) = log n,  H(P) = -sum_b p(b) log p(b)   (eq. 8)

NMI lies in [0, 1] (I <= min(H(X), H(P))). It is high when every patch token clearly picks out
some prompt and different tokens pick different prompts (prompts that look like patch tokens), and
near 0 for prompts the tokens attend to uniformly (e.g. small random ones). With a single prompt
H(P) = 0 and NMI is defined as 0.
"""

from __future__ import annotations

import math

import torch

from vptsearch._errors import ConfigError
from vptsearch.models.tuned import TunedModel


def nmi(prompts: torch.Tensor, tokens: torch.Tensor) -> float:
    """NMI between prompts [p, d] and patch tokens [n, d] as defined in the module docstring."""
    p, n = prompts.shape[0], tokens.shape[0]
    if p < 2 or n < 2:
        return 0.0
    logits = tokens.double() @ prompts.double().T / math.sqrt(prompts.shape[1])
    log_q = torch.log_softmax(logits, dim=1)  # log q(b | a), [n, p]
    q = log_q.exp()
    p_b = q.mean(0)  # p(b)
    # I = sum_a (1/n) sum_b q(b|a) [log q(b|a) - log p(b)]
    info = (q * (log_q - torch.log(p_b.clamp_min(1e-300)))).sum() / n
    h_p = -(p_b * torch.log(p_b.clamp_min(1e-300))).sum()
    h_x = math.log(n)
    if float(h_p) <= 0:
        return 0.0
    value = float(info) / math.sqrt(h_x * float(h_p))
    return min(1.0, max(0.0, value))


@torch.no_grad()
def prompt_nmi(model: TunedModel, images: torch.Tensor, batch_size: int = 64) -> list[float]:
    """NMI per prompted layer (one value for shallow, one per layer for deep).

    The patch tokens are those entering each layer *in the prompted model* (so they move as the
    prompts train); call it once per epoch on a fixed batch of training images.
    """
    if model.prompt_tokens is None:
        raise ConfigError(f"prompt_nmi needs a prompted model (method 'vpt'), got {model.method!r}")
    was_training = model.training
    model.eval()
    device = model.prompt_tokens.device
    per_layer: list[list[torch.Tensor]] = []
    try:
        for b in images.split(batch_size):
            collect: list[torch.Tensor] = []
            model.forward_tokens(b.to(device), collect=collect)
            per_layer.append([c.reshape(-1, c.shape[-1]) for c in collect])
    finally:
        model.train(was_training)
    layers = model.prompt_tokens.shape[0]
    return [nmi(model.prompt_tokens[i], torch.cat([batch[i] for batch in per_layer])) for i in range(layers)]
