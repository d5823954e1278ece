"""The spec validates YAML without importing torch, so it reads the names it accepts from the torch-free
catalogue (vptsearch/_catalogue.py); the catalogue must stay equal to the model registries and options or
a valid YAML value would fail at trial time (or a registered extension could never be searched)."""

from vptsearch import _catalogue, spec
from vptsearch.models.initializers import INITIALIZERS
from vptsearch.models.methods import METHODS


def test_spec_reads_the_catalogue():
    for name in ("METHODS", "INITS", "DEPTHS", "DEEP_IMPLS", "DROPOUT_MASKS", "HEAD_NORMS"):
        assert getattr(spec, name) is getattr(_catalogue, name), name


def test_spec_methods_equal_the_method_registry():
    assert sorted(spec.METHODS) == sorted(METHODS.names())


def test_spec_inits_equal_the_initialiser_registry():
    assert sorted(spec.INITS) == sorted(INITIALIZERS.names())


def test_spec_deep_impls_and_depths_equal_the_model_ones():
    from vptsearch.models import tuned

    assert tuple(spec.DEEP_IMPLS) == tuple(tuned.DEEP_IMPLS)
    assert sorted(spec.DEPTHS) == sorted(tuned.DEPTHS)


def test_catalogue_dropout_masks_and_head_norms_equal_the_model_ones():
    from vptsearch.models import tuned

    assert _catalogue.DROPOUT_MASKS == tuned.DROPOUT_MASKS
    assert _catalogue.HEAD_NORMS == tuned.HEAD_NORMS


def test_the_vpt_defaults_equal_the_spec_defaults():
    """build_model("vpt") without options builds what a spec without params trains (deep_impl once
    defaulted to tokens in the model and prefix_kv in the spec)."""
    opts = METHODS.get("vpt").options()
    assert opts["deep_impl"] == spec.PARAMS["prompt.deep_impl"].default
    assert opts["depth"] == spec.PARAMS["prompt.depth"].default
    assert opts["prompt_length"] == spec.PARAMS["prompt.length"].default
    assert opts["frozen"] == spec.PARAMS["prompt.frozen"].default
