from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from swan_policy.config import (
    ConfigError,
    ExperimentConfig,
    PolicyConfig,
    apply_overrides,
    config_changes,
    dump_config,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_round_trip(path: Path) -> None:
    cfg = load_config(path)
    again = ExperimentConfig.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = "policy: {proprio_dim: 3, action_dim: 2}\n"


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        (BASE + "bogus: 1\n", [], r"^bogus: Extra inputs are not permitted"),
        (
            BASE,
            ["policy.gate.tau=-1"],
            r"^policy\.gate\.tau: Input should be greater than 0 \(got -1\)",
        ),
        (BASE, ["policy.encoder.channels=abc"], r"^policy\.encoder\.channels: .*list"),
        (BASE, ["policy.encoder.strides=[1]"], r"strides has 1 entries but channels has 4"),
        (
            BASE,
            ["policy.gate.sparsity=l2"],
            r"^policy\.gate\.sparsity: Input should be 'l1' or 'target'",
        ),
        (BASE, ["policy.gate"], r"expected key=value"),
        (BASE, ["dagger.budget=[1.0, 0]"], r"^dagger\.budget: .*budgets must be in \(0, 1\]"),
        (BASE, ["dagger.budget=1.5"], r"^dagger\.budget: .*budgets must be in \(0, 1\]"),
        (BASE, ["seed=[unclosed"], r"^override seed: cannot parse value"),
        ("policy: {action_dim: 0}\n", [], r"^policy\.action_dim: Input should be greater than"),
        ("- a\n- b\n", [], r"expected a mapping"),
        ("policy: [\n", [], r"invalid YAML"),
        # inf / nan would pass the range checks (tau = inf silences every gate)
        (BASE, ["policy.gate.tau=.inf"], r"^policy\.gate\.tau: Input should be a finite"),
        (BASE, ["policy.gate.init_bias=.nan"], r"^policy\.gate\.init_bias: .*finite"),
        (BASE, ["bc.lr=.inf"], r"^bc\.lr: Input should be a finite number"),
        # the conv stack (no padding) must fit the image; a field-naming error, not a
        # build error later
        (
            "policy: {image_hw: [12, 12], image_channels: 3, proprio_dim: 3, action_dim: 2}\n",
            [],
            r"^policy: .*image_hw \(12, 12\) is too small for encoder\.strides \[2, 1, 1, 1\]",
        ),
        # ref_units: every gated layer, none below its own units (b = 1 is the free gate)
        (
            "policy: {pixels: false, proprio_dim: 3, action_dim: 2, head: {hidden: [4]}}\n",
            ["policy.ref_units={head.layers.0: 3}"],
            r"ref_units\.head\.layers\.0: must be >= the layer's 4 units, got 3",
        ),
        (
            "policy: {pixels: false, proprio_dim: 3, action_dim: 2, head: {hidden: [4]}}\n",
            ["policy.ref_units={head.layers.1: 8}"],
            r"ref_units must name every gated layer .*unknown \['head\.layers\.1'\], "
            r"missing \['head\.layers\.0'\]",
        ),
    ],
)
def test_bad_configs_name_the_field(
    tmp_path: Path, text: str, overrides: list[str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text), overrides)


def test_overrides_set_nested_values(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, BASE),
        [
            "policy.gate.tau=0.5",
            "policy.head.hidden=[8, 8, 8]",
            "name=x",
            "env.kwargs.variation=hard",
        ],
    )
    assert cfg.policy.gate.tau == 0.5
    assert cfg.policy.head.hidden == [8, 8, 8]
    assert cfg.name == "x"
    assert cfg.env.kwargs == {"variation": "hard"}


@given(
    keys=st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), min_size=1, max_size=4),
    value=st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans()),
)
def test_override_parsing_property(keys: list[str], value: object) -> None:
    data = apply_overrides(
        {}, [".".join(keys) + "=" + yaml.safe_dump(value).strip().removesuffix("...").strip()]
    )
    node: object = data
    for k in keys:
        assert isinstance(node, dict)
        node = node[k]
    assert node == value


def test_policy_needs_resolved_dims() -> None:
    from swan_policy.policy import SwanPolicy

    with pytest.raises(ConfigError, match=r"policy\.image_hw, policy\.image_channels.* not set"):
        SwanPolicy(PolicyConfig(proprio_dim=3, action_dim=2))


def test_config_changes_lists_each_changed_dotted_key() -> None:
    old = {"bc": {"steps": 6, "lr": 0.1}, "dagger": {"rounds": 6, "budget": [1.0]}, "seed": 0}
    new = {"bc": {"steps": 6, "lr": 0.2}, "dagger": {"rounds": 8, "budget": [1.0]}, "seed": 0}
    assert config_changes(old, new) == ["bc.lr: 0.1 -> 0.2", "dagger.rounds: 6 -> 8"]
    assert config_changes(old, old) == []
    # a key only one side has, and a list that changed
    assert config_changes({"a": {"b": 1}}, {"a": {"c": [2]}}) == [
        "a.b: 1 -> None",
        "a.c: None -> [2]",
    ]
