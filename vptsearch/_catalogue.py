"""The names the model registries and options accept, as plain tuples (importing this needs no torch).

The spec validates a YAML file before any trial starts and must not import torch to do it, so it
cannot ask the registries in ``vptsearch.models``. It reads these tuples instead, and
``tests/test_registry_sync.py`` checks them against the registries and the model's option lists:
registering a method or an initialiser means adding its name here too (the test says so).
"""

from __future__ import annotations

# vptsearch.models.methods.METHODS, in the order the spec lists them in its errors
METHODS = ("vpt", "linear", "full", "bias", "partial", "adapter")
# vptsearch.models.initializers.INITIALIZERS
INITS = ("random", "spt-mean", "spt-max", "spt-sample", "spt-kmeans", "cls-prototype")
# vptsearch.models.tuned: the options of TunedModel.add_prompts and set_head_norm
DEPTHS = ("shallow", "deep")
DEEP_IMPLS = ("tokens", "prefix_kv")
DROPOUT_MASKS = ("sample", "batch")
HEAD_NORMS = ("none", "batchnorm", "standardize")
# vptsearch._head_init.HEAD_INITS: how a trial's linear head starts
HEAD_INITS = ("probe", "random", "zero")
# vptsearch._head_init.HEAD_REFITS: whether a trial's head is refitted after its last epoch
HEAD_REFITS = ("probe", "none")
