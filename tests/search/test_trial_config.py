"""The typed trial config and the SPT prompt cache: one reading of the sampled dict (defaults filled
once, the dict given back unchanged), each method's own build_model options, a cache per backbone."""

from __future__ import annotations

import gc

import pytest
import torch

from vptsearch._errors import ConfigError
from vptsearch._prompt_cache import PromptInitCache
from vptsearch._trial_config import TrialConfig
from vptsearch.spec import TrainingConfig

TRAINING = TrainingConfig(prompt_dropout=0.2, prompt_dropout_mask="batch")


def test_from_sampled_fills_the_defaults_once_and_types_the_values() -> None:
    cfg = {"method": "vpt", "prompt.length": 4, "optim.base_lr": 2, "task": "mini/digits", "seed": 3}
    t = TrialConfig.from_sampled(cfg, TRAINING)
    assert (t.method, t.base_lr, t.weight_decay, t.head_norm) == ("vpt", 2.0, 0.0, "none")
    assert isinstance(t.base_lr, float) and (t.task, t.phase, t.seed, t.warm_start) == ("mini/digits",
                                                                                         "search", 3, None)
    p = t.prompt
    assert p is not None and (p.length, p.depth, p.init, p.frozen) == (4, "deep", "random", False)
    assert p.deep_impl == "prefix_kv"  # the spec's default, which the trial always filled in
    assert (p.dropout, p.dropout_mask) == (0.2, "batch")  # from the spec's training section
    assert t.adapter_reduction is None and t.partial_k is None
    assert TrialConfig.from_sampled({"method": "linear"}, TRAINING).prompt is None


def test_to_params_gives_the_sampled_dict_back_exactly() -> None:
    cfg = {"phase": "final", "seed": 1, "method": "adapter", "adapter.reduction": 4, "optim.base_lr": 1,
           "warm_start": "mini/textures", "task": "mini/digits", "extra": [1, 2]}
    t = TrialConfig.from_sampled(cfg, TRAINING)
    back = t.to_params()
    assert back == cfg and list(back) == list(cfg)  # same keys in the same order
    assert type(back["optim.base_lr"]) is int  # MLflow logs str(value): 1 stays "1"
    assert TrialConfig.from_sampled(back, TRAINING) == t
    assert (t.adapter_reduction, t.warm_start, t.phase) == (4, "mini/textures", "final")


def test_bad_phase_and_unknown_method_are_one_config_error() -> None:
    with pytest.raises(ConfigError, match=r"trial phase 'test' is unknown; accepted: search, final"):
        TrialConfig.from_sampled({"method": "vpt", "phase": "test"}, TRAINING)
    with pytest.raises(ConfigError, match=r"trial method 'lora' is unknown; accepted: adapter, .*vpt"):
        TrialConfig.from_sampled({"method": "lora"}, TRAINING)


def test_each_method_turns_the_config_into_its_own_options() -> None:
    from vptsearch.models.methods import METHODS

    def options(cfg: dict) -> dict:
        t = TrialConfig.from_sampled(cfg, TRAINING)
        return METHODS.get(t.method).build_options(t)

    assert options({"method": "vpt", "prompt.length": 3, "prompt.frozen": True}) == {
        "prompt_length": 3, "depth": "deep", "prompt_dropout": 0.2, "deep_impl": "prefix_kv",
        "dropout_mask": "batch", "frozen": True,
    }  # fmt: skip
    assert "frozen" not in options({"method": "vpt"})  # only when set (bundles keep their options)
    adapter = {"method": "adapter", "head.norm": "batchnorm"}
    assert options(adapter) == {"head_norm": "batchnorm", "reduction": 8}
    assert options({"method": "partial", "partial.k": 2}) == {"k": 2}
    assert options({"method": "linear"}) == options({"method": "full"}) == {}
    # every method's options are options its build_model accepts
    for name in METHODS.names():
        extra = {"method": name, "head.norm": "batchnorm"}
        assert set(options(extra)) - {"head_norm"} <= set(METHODS.get(name).options()), name
def test_prompt_init_cache_keeps_copies_and_drops_the_least_recently_used() -> None:
    cache = PromptInitCache(size=2)
    prompts, info = torch.zeros(2, 3), {"strategy": "spt-mean"}
    cache.put("a", prompts, info)
    prompts += 1  # the trial trains its own prompts: the cached ones stay as initialised
    info["cached"] = True
    got = cache.get("a")
    assert got is not None and torch.equal(got[0], torch.zeros(2, 3)) and got[1] == {"strategy": "spt-mean"}
    cache.put("b", prompts, {})
    assert cache.get("a") is not None  # "a" is now the newest
    cache.put("c", prompts, {})
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") is not None
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        PromptInitCache(size=0)


def test_a_backbone_has_its_own_cache_and_takes_it_along_when_freed() -> None:
    from types import SimpleNamespace

    import vptsearch.train as train

    first, second = SimpleNamespace(model=torch.nn.Linear(2, 2)), SimpleNamespace(model=torch.nn.Linear(2, 2))
    cache = train._init_cache_of(first)
    assert train._init_cache_of(first) is cache and train._init_cache_of(second) is not cache
    before = len(train._INIT_CACHE)
    del first, second
    gc.collect()
    assert len(train._INIT_CACHE) == before - 2  # no id() can name a freed backbone's prompts


def test_full_fine_tuning_defaults_to_the_random_head_at_the_bodys_lr() -> None:
    """A fitted head collapsed full fine-tuning (docs/search.md): its defaults differ, the others'
    do not, and a value written in the space still wins."""
    from vptsearch._trial_config import TrialConfig
    from vptsearch.spec import PARAMS, TrainingConfig
    from vptsearch.spec._spaces import trial_defaults

    full_defaults = trial_defaults("full")
    assert (full_defaults["head.init"], full_defaults["optim.head_lr_scale"]) == ("random", 1.0)
    assert trial_defaults("vpt")["head.init"] == "probe"
    assert trial_defaults("linear")["optim.head_lr_scale"] == 0.1
    assert PARAMS["head.init"].default_for("full") == "random"
    assert PARAMS["head.init"].default_for(None) == "probe"
    full = TrialConfig.from_sampled({"method": "full", "optim.base_lr": 0.1}, TrainingConfig())
    assert (full.head_init, full.head_lr_scale) == ("random", 1.0)
    chosen = TrialConfig.from_sampled({"method": "full", "head.init": "probe"}, TrainingConfig())
    assert chosen.head_init == "probe"
