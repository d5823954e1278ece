"""Spec validation: every malformed search space fails with one line naming its key path."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from vptsearch._errors import ConfigError
from vptsearch.spec import define_by_run, grid_configs, load_spec, spec_from_dict

GOOD = """
name: t
suite: mini
method: vpt
params:
  prompt.length: {choice: [1, 5]}
  optim.base_lr: {loguniform: [0.05, 50]}
"""

# (YAML, substrings the one-line error must contain)
CORPUS = [
    ("name: t\nsuite: mini\nparams: {prompt.length: [1, 2}\n", ["malformed YAML", "line 3"]),
    ("", ["empty"]),
    ("- a\n- b\n", ["mapping at the top level"]),
    ("suite: mini\n", ["name", "missing"]),
    ("name: t\n", ["suite", "missing"]),
    ("name: t\nsuite: mini\nsuit: x\n", ["suit", "unknown key", "did you mean 'suite'"]),
    ("name: t\nsuite: mini\nmethod: lora\n", ["method", "'lora'", "accepted: vpt"]),
    ("name: t\nsuite: mini\nmethod: {choice: [vpt, lineer]}\n", ["method.choice[1]", "'lineer'"]),
    ("name: t\nsuite: mini\nparams: {prompt.lenght: 5}\n", ["params.prompt.lenght", "prompt.length"]),
    ("name: t\nsuite: mini\nparams: {prompt.length: 0}\n", ["params.prompt.length", "positive integer"]),
    (
        "name: t\nsuite: mini\nparams: {prompt.length: {choice: [1, ten]}}\n",
        ["params.prompt.length.choice[1]"],
    ),
    (
        "name: t\nsuite: mini\nparams: {prompt.init: {choice: [random, spt-kmean]}}\n",
        ["prompt.init.choice[1]"],
    ),
    (
        "name: t\nsuite: mini\nparams: {prompt.init: {uniform: [0, 1]}}\n",
        ["params.prompt.init.uniform", "categorical"],
    ),
    (
        "name: t\nsuite: mini\nparams: {optim.base_lr: {loguniform: [0, 1]}}\n",
        ["params.optim.base_lr.loguniform[0]"],
    ),
    (
        "name: t\nsuite: mini\nparams: {optim.base_lr: {uniform: [5, 1]}}\n",
        ["params.optim.base_lr.uniform", "low"],
    ),
    ("name: t\nsuite: mini\nparams: {optim.base_lr: {normal: [0, 1]}}\n", ["params.optim.base_lr.normal"]),
    (
        "name: t\nsuite: mini\nmethod: linear\nparams: {prompt.length: 10}\n",
        ["params.prompt.length", "'vpt'"],
    ),
    (
        "name: t\nsuite: mini\nmethod: vpt\nparams: {adapter.reduction: 8}\n",
        ["params.adapter.reduction", "adapter"],
    ),
    ("name: t\nsuite: mini\nsearch: {algorithm: bayes}\n", ["search.algorithm", "tpe"]),
    ("name: t\nsuite: mini\nsearch: {trials_per_task: 0}\n", ["search.trials_per_task", ">= 1"]),
    ("name: t\nsuite: mini\nsearch: {trials: 4}\n", ["search.trials", "trials_per_task"]),
    ("name: t\nsuite: mini\nscheduler: {type: pbt}\n", ["scheduler.type", "asha"]),
    (
        "name: t\nsuite: mini\nscheduler: {grace_period: 20}\ntraining: {epochs: 10}\n",
        ["scheduler.grace_period"],
    ),
    ("name: t\nsuite: mini\ntraining: {epochs: ten}\n", ["training.epochs", "integer"]),
    ("name: t\nsuite: mini\ntraining: {warmup_epochs: 10, epochs: 10}\n", ["training.warmup_epochs"]),
    ("name: t\nsuite: mini\ntraining: {optimizer: adam}\n", ["training.optimizer", "sgd", "adamw"]),
    (
        "name: t\nsuite: mini\ntraining: {prompt_dropout_mask: shared}\n",
        ["training.prompt_dropout_mask", "sample", "batch"],
    ),
    ("name: t\nsuite: mini\nparams: {head.norm: layernorm}\n", ["params.head.norm", "batchnorm"]),
    ("name: t\nsuite: mini\nresources: {cpu: 0}\n", ["resources.cpu"]),
    ("name: t\nsuite: mini\nresources: {gpu: 1.5}\n", ["resources.gpu", "fractions"]),
    ("name: t\nsuite: mini\nprotocol: {final_seeds: [0, 0]}\n", ["protocol.final_seeds", "duplicate"]),
    ("name: t\nsuite: mini\nprotocol: {final_seeds: []}\n", ["protocol.final_seeds"]),
    ("name: t\nsuite: mini\nbackbone: {weights: imagenet}\n", ["backbone.weights", "hub"]),
    ("name: t\nsuite: mini\nbackbone: vit\n", ["backbone", "mapping"]),
    (
        "name: t\nsuite: mini\nsearch: {algorithm: grid}\nparams: {optim.base_lr: {uniform: [1, 2]}}\n",
        ["params.optim.base_lr", "grid"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), CORPUS, ids=[f"case{i}" for i in range(len(CORPUS))])
def test_malformed_spec_names_its_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_overrides_smoke_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(GOOD)
    spec = load_spec(path, ["params.prompt.length={choice: [2, 3]}", "search.seed=7", "training.epochs=40"])
    assert spec.params["prompt.length"].values == (2, 3)
    assert spec.search.seed == 7
    assert spec.training.warmup_epochs == 4 and spec.scheduler.grace_period == 4  # paper ratios
    with pytest.raises(ConfigError, match=r"search\.sed"):
        load_spec(path, ["search.sed=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_spec(path, ["search.seed"])
    small = load_spec(path, smoke=True)
    assert small.smoke and small.training.epochs <= 3 and small.search.trials_per_task <= 4
    # the merged spec saved with a run loads back to the same object
    again = spec_from_dict(yaml.safe_load(yaml.safe_dump(small.to_dict())))
    assert again == small


def test_spec_is_frozen(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(GOOD)
    spec = load_spec(path)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def test_define_by_run_is_conditional_on_the_method() -> None:
    spec = spec_from_dict(
        yaml.safe_load("""
name: t
suite: mini
method: {choice: [vpt, linear, adapter]}
params:
  prompt.length: {choice: [1, 5]}
  adapter.reduction: {choice: [4, 8]}
  optim.base_lr: {loguniform: [0.05, 50]}
""")
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        cfg = define_by_run(spec)(study.ask())
        seen.add(cfg["method"])
        assert ("prompt.length" in cfg) == (cfg["method"] == "vpt")
        assert ("adapter.reduction" in cfg) == (cfg["method"] == "adapter")
        assert 0.05 <= cfg["optim.base_lr"] <= 50
    assert seen == {"vpt", "linear", "adapter"}
    grid = grid_configs(
        spec_from_dict(
            {
                **yaml.safe_load(GOOD),
                "params": {"prompt.length": {"choice": [1, 5]}},
                "method": {"choice": ["vpt", "linear"]},
            }
        )
    )
    assert grid == [
        {"method": "vpt", "prompt.length": 1},
        {"method": "vpt", "prompt.length": 5},
        {"method": "linear"},
    ]


def test_define_by_run_points_are_the_optuna_params_of_every_configuration() -> None:
    """What the searcher draws an untried configuration from: the sampled params of each point
    (fixed values are no Optuna params), conditional on the method; None for a range."""
    raw = {
        **yaml.safe_load(GOOD),
        "method": {"choice": ["vpt", "linear"]},
        "params": {
            "prompt.length": {"choice": [1, 5]},
            "optim.base_lr": 0.5,
            "optim.weight_decay": {"choice": [0.0, 0.1]},
        },
    }
    points = define_by_run(spec_from_dict(raw)).points()
    assert points == [
        {"method": "vpt", "prompt.length": 1, "optim.weight_decay": 0.0},
        {"method": "vpt", "prompt.length": 1, "optim.weight_decay": 0.1},
        {"method": "vpt", "prompt.length": 5, "optim.weight_decay": 0.0},
        {"method": "vpt", "prompt.length": 5, "optim.weight_decay": 0.1},
        {"method": "linear", "optim.weight_decay": 0.0},
        {"method": "linear", "optim.weight_decay": 0.1},
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):  # each is what an Optuna trial of this space holds as its params
        trial = study.ask()
        define_by_run(spec_from_dict(raw))(trial)
        assert trial.params in points
    assert define_by_run(spec_from_dict(raw)).points(limit=5) is None  # too many to enumerate
    ranged = {**raw, "params": {**raw["params"], "optim.base_lr": {"loguniform": [0.05, 50]}}}
    assert define_by_run(spec_from_dict(ranged)).points() is None


def test_shipped_search_spaces_are_valid() -> None:
    spaces = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))
    names = {p.stem for p in spaces}
    assert {"vtab_deep", "vtab_shallow", "fgvc_deep", "vtab_methods", "mini_deep"} <= names
    for p in spaces:
        spec = load_spec(p)
        assert spec.name == p.stem
        assert p.read_text().startswith("#"), f"{p.name} needs a header comment (command, runtime, outcome)"
        load_spec(p, smoke=True)
