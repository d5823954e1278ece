"""Model cards and the registry of card-described weights files.

A model card is the JSON file next to a weights file (``<name>.json`` beside
``<name>.safetensors``). Loading needs a few of its keys (architecture, timm kwargs, sha256,
preprocessing): those are typed fields of :class:`ModelCard`. Everything else a card records
(pretraining recipe, linear probe, verification, licence, ...) is provenance for people and stays
readable by key, so ``card["linear_probe"]`` works as it did when the card was a plain dict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vptsearch._errors import DataError
from vptsearch._registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RGB = tuple[float, float, float]


def rgb(values: Any) -> RGB:
    r, g, b = (float(v) for v in values)
    return (r, g, b)


@dataclass(frozen=True)
class ModelCard(Mapping[str, Any]):
    """The keys of a card that loading reads, typed; the whole card as a read-only mapping.

    ``None`` means the card does not say: the loader takes timm's value (image size from the patch
    embedding, mean/std from the pretrained config).
    """

    architecture: str | None = None  # timm model name
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    sha256: str | None = None  # of the weights file the card describes
    image_size: int | None = None
    mean: RGB | None = None
    std: RGB | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # every key, as in the file

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        def opt(key: str, convert: Callable[[Any], Any]) -> Any:
            return convert(data[key]) if data.get(key) is not None else None

        return cls(
            architecture=opt("architecture", str),
            model_kwargs=dict(data.get("model_kwargs") or {}),
            name=opt("name", str),
            sha256=opt("sha256", str),
            image_size=opt("image_size", int),
            mean=opt("mean", rgb),
            std=opt("std", rgb),
            raw=dict(data),
        )

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """The card in ``path``; a file that is not a JSON object raises ``ValueError``."""
        data = json.loads(path.read_text())
        if not isinstance(data, Mapping):
            raise ValueError(f"model card {path} is not a JSON object")
        return cls.from_dict(data)

    def require_architecture(self, origin: object) -> str:
        if not self.architecture:
            raise DataError(f"model card {origin} names no architecture (a timm model name)")
        return self.architecture

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


@dataclass(frozen=True)
class CardBackbone:
    """A registered backbone: ``<directory>/<name>.safetensors`` described by ``<name>.json``."""

    name: str
    directory: Callable[[], Path]
    source: str  # "shipped" (in the package) or "local" (made in the user's cache by a pipeline)
    description: str
    missing_hint: str  # the command that produces the files when they are absent
    # used for weights="none" when the card is absent (so every entry builds offline)
    architecture: str = ""
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.directory() / f"{self.name}.safetensors"

    @property
    def card_path(self) -> Path:
        return self.directory() / f"{self.name}.json"

    def available(self) -> bool:
        return self.weights_path.is_file() and self.card_path.is_file()

    def card(self, random: bool) -> ModelCard:
        """The card on disk; for random weights without one, the entry's own architecture."""
        if self.available():
            return ModelCard.read(self.card_path)
        if random and self.architecture:
            return ModelCard.from_dict(
                {"architecture": self.architecture, "model_kwargs": dict(self.model_kwargs)}
            )
        raise DataError(
            f"backbone {self.name!r} has no weights at {self.weights_path}; run: {self.missing_hint}"
        )


BACKBONES: Registry[CardBackbone] = Registry("backbone")


def register_backbone(entry: CardBackbone) -> CardBackbone:
    BACKBONES.add(entry.name, entry)
    return entry


def list_backbones() -> list[str]:
    """Names of the registered backbones (any timm ViT name or local file is accepted as well)."""
    return BACKBONES.names()
