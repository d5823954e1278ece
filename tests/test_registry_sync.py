"""spec.py validates YAML without importing torch, so it keeps its own lists of method and initialiser
names; these must stay equal to the model registries or a valid YAML value would fail at trial time
(or a registered extension could never be searched)."""

from vptsearch import spec
from vptsearch.models.initializers import INITIALIZERS
from vptsearch.models.methods import METHODS


def test_spec_methods_equal_the_method_registry():
    assert sorted(spec.METHODS) == sorted(METHODS.names())


def test_spec_inits_equal_the_initialiser_registry():
    assert sorted(spec.INITS) == sorted(INITIALIZERS.names())


def test_spec_deep_impls_and_depths_equal_the_model_ones():
    from vptsearch.models import tuned

    assert tuple(spec.DEEP_IMPLS) == tuple(tuned.DEEP_IMPLS)
    assert sorted(spec.DEPTHS) == sorted(tuned.DEPTHS)
