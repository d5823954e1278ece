"""The model library: prompted/tuned timm ViTs, tuning methods, prompt initialisers, NMI, accounting.

Public API (see docs/models.md): ``build_model``, ``TunedModel``, ``initialize_prompts``,
``prompt_nmi``, ``parameter_accounting``, ``kmeans``, the registries ``METHODS`` / ``INITIALIZERS``
(with ``list_methods`` / ``list_initializers``), and from the backbone registry ``Backbone``,
``load_backbone``, ``list_backbones``.
"""

from __future__ import annotations

from vptsearch.models.accounting import parameter_accounting
from vptsearch.models.backbones import Backbone, list_backbones, load_backbone
from vptsearch.models.initializers import INITIALIZERS, initialize_prompts, list_initializers
from vptsearch.models.kmeans import kmeans
from vptsearch.models.methods import METHODS, Method, build_model, list_methods
from vptsearch.models.nmi import nmi, prompt_nmi
from vptsearch.models.tuned import TunedModel

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

