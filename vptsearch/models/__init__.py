"""The model library: prompted/tuned timm ViTs, tuning methods, prompt initialisers, NMI, accounting.

Public API (see docs/models.md): ``build_model``, ``TunedModel``, ``initialize_prompts``,
``prompt_nmi``, ``parameter_accounting``, ``kmeans``, the registries ``METHODS`` / ``INITIALIZERS``
(with ``list_methods`` / ``list_initializers``), and from the backbone registry ``Backbone``,
``load_backbone``, ``list_backbones``.

Names are imported lazily (like ``vptsearch.data``): the CLI builds its ``backbones`` commands
from ``vptsearch.models._cli`` without importing torch, which alone is ~650 MB of resident memory
and a second of start-up for every ``vptsearch`` command. (``kmeans`` and ``nmi`` live in private
modules: a public submodule named like its function would replace the function on the package as
soon as anything imported the submodule.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vptsearch._lazy import lazy_getattr

_LAZY = {
    "parameter_accounting": "vptsearch.models.accounting",
    "Backbone": "vptsearch.models.backbones",
    "list_backbones": "vptsearch.models.backbones",
    "load_backbone": "vptsearch.models.backbones",
    "INITIALIZERS": "vptsearch.models.initializers",
    "initialize_prompts": "vptsearch.models.initializers",
    "list_initializers": "vptsearch.models.initializers",
    "kmeans": "vptsearch.models._kmeans",
    "METHODS": "vptsearch.models.methods",
    "Method": "vptsearch.models.methods",
    "build_model": "vptsearch.models.methods",
    "list_methods": "vptsearch.models.methods",
    "nmi": "vptsearch.models._nmi",
    "prompt_nmi": "vptsearch.models._nmi",
    "TunedModel": "vptsearch.models.tuned",
}

__all__ = [
    "INITIALIZERS",
    "METHODS",
    "Backbone",
    "Method",
    "TunedModel",
    "build_model",
    "initialize_prompts",
    "kmeans",
    "list_backbones",
    "list_initializers",
    "list_methods",
    "load_backbone",
    "nmi",
    "parameter_accounting",
    "prompt_nmi",
]

if TYPE_CHECKING:
    from vptsearch.models._kmeans import kmeans
    from vptsearch.models._nmi import nmi, prompt_nmi
    from vptsearch.models.accounting import parameter_accounting
    from vptsearch.models.backbones import Backbone, list_backbones, load_backbone
    from vptsearch.models.initializers import INITIALIZERS, initialize_prompts, list_initializers
    from vptsearch.models.methods import METHODS, Method, build_model, list_methods
    from vptsearch.models.tuned import TunedModel


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return __all__
