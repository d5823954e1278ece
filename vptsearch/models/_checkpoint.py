"""Reading a weights file into a headless ViT: safetensors or a plain torch state dict, strictly."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vptsearch._errors import ConfigError, DataError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# prefixes of classifier weights that checkpoints may carry; the backbone is always headless
_HEAD_PREFIXES = ("head.", "head_dist.", "fc.", "classifier.")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint, without running pickled code."""
    if not path.is_file():
        raise ConfigError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise DataError(f"cannot read safetensors file {path}: {exc}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"checkpoint {path} is a pickle that needs arbitrary code to load ({first[:160]}); "
            "accepted: .safetensors or a plain tensor state dict saved with torch.save"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise DataError(f"cannot read checkpoint {path}: {exc}") from None
    # common wrappers: {"state_dict": ...}, {"model": ...}, {"module": ...}
    while isinstance(obj, Mapping) and len(obj) >= 1 and not any(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "module", "model_state") if k in obj), None)
        if not isinstance(inner, Mapping):
            break
        obj = inner
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConfigError(f"checkpoint {path} holds no tensor state dict; accepted: a mapping name -> tensor")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _some(keys: list[str]) -> str:
    return f"{keys[:3]}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_state_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, origin: str, architecture: str
) -> None:
    """Strictly load ``state`` (minus head weights); errors name the first tensor that does not fit."""
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    expected = model.state_dict()
    for key, ref in expected.items():  # the model's order: "first" means first in the network
        if key in state and tuple(ref.shape) != tuple(state[key].shape):
            raise ConfigError(
                f"checkpoint {origin} does not fit architecture {architecture!r}: tensor {key!r} has shape "
                f"{list(state[key].shape)} in the file but {list(ref.shape)} in the model "
                "(check architecture and model_kwargs such as img_size, patch_size, embed_dim, depth)"
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"missing {_some(missing)}"] if missing else []
        parts += [f"unexpected {_some(unexpected)}"] if unexpected else []
        raise ConfigError(
            f"checkpoint {origin} does not fit architecture {architecture!r}: {'; '.join(parts)}"
        )
    model.load_state_dict(state, strict=True)
