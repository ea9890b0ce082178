"""Typed experiment configs (pydantic, unknown keys refused) and YAML loading.

Every field has a type, a default and a one-line description; validation errors name
the field, the value and the rule. ``load_config(path, overrides)`` applies dotted
``--set a.b=value`` overrides (values parsed as YAML) before validation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config file, field or override is invalid (message names the field)."""


class StrictModel(BaseModel):
    # no inf / nan in any float field: `gate.tau: .inf` would silence every gate's
    # gradient, `gate.init_bias: .nan` switch every gate off for good
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class GateConfig(StrictModel):
    """SWAN gate hyper-parameters (DESIGN.md §3)."""

    enabled: bool = Field(True, description="Attach gates (False builds the dense baseline).")
    tau: float = Field(1.0, gt=0, description="Temperature of the sigmoid surrogate (backward).")
    sparsity: Literal["l1", "target"] = Field(
        "l1", description="Regulariser: expected active fraction, or excess over target_rate."
    )
    target_rate: float = Field(0.5, gt=0, le=1, description="Active fraction for 'target'.")
    sparsity_weight: float = Field(0.0, ge=0, description="Weight of the sparsity term.")
    init_bias: float = Field(1.0, description="Initial gate-logit bias (>0: start active).")
    linear_rank: int = Field(4, ge=1, le=16, description="Rank of the linear layers' gates.")
    detach_input: bool = Field(
        False,
        description="Stop the gate networks' gradients at their input: the straight-through "
        "estimate trains the gate networks but never reaches the layers below. The shipped "
        "imitation configs set it (higher success at every budget on all three tasks, "
        "docs/results.md session 17); RL was not measured with it.",
    )


class EncoderConfig(StrictModel):
    """Gated CNN encoder."""

    channels: list[int] = Field([32, 32, 32, 32], description="Channels per conv layer.")
    strides: list[int] = Field([2, 1, 1, 1], description="Stride per conv layer.")
    kernel_size: int = Field(3, ge=1, le=7, description="Conv kernel size.")
    input_norm: Literal["fixed", "image"] = Field(
        "fixed",
        description="Pixel normalisation: 'fixed' maps [0, 255] to [-0.5, 0.5]; 'image' "
        "standardises each image's channels (zero mean, unit std over the pixels), which "
        "takes out the light's strength and a colour cast over the whole image (the "
        "first conv's gate then reads zero means: its units follow their bias alone).",
    )

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if not self.channels:
            raise ValueError("channels must list at least one layer")
        if len(self.strides) != len(self.channels):
            raise ValueError(
                f"strides has {len(self.strides)} entries but channels has {len(self.channels)}"
            )
        if min(self.channels) < 1 or min(self.strides) < 1:
            raise ValueError("channels and strides must be >= 1")
        return self


class HeadConfig(StrictModel):
    """Gated MLP action head and proprio MLP."""

    hidden: list[int] = Field([256, 256], description="Width of each gated hidden layer.")
    proprio_hidden: int = Field(
        64, ge=0, description="Width of the proprio MLP (0: feed the normalised vector directly)."
    )

    @model_validator(mode="after")
    def _check(self) -> HeadConfig:
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError("hidden must list at least one layer, each >= 1 wide")
        return self


class PolicyConfig(StrictModel):
    """Everything needed to rebuild a SwanPolicy (saved as config.json beside weights)."""

    pixels: bool = Field(
        True, description="Pixel encoder (False: proprio-only policy for state observations)."
    )
    image_hw: tuple[int, int] | None = Field(
        None, description="Image height and width (None: from the env)."
    )
    image_channels: int | None = Field(
        None, ge=1, description="Image channels, 3 x stacked frames (None: from the env)."
    )
    proprio_dim: int | None = Field(
        None, ge=1, description="Length of the proprio vector (None: from the env)."
    )
    action_dim: int | None = Field(
        None, ge=1, description="Length of the action vector (None: from the env)."
    )
    gate: GateConfig = Field(default_factory=GateConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    ref_units: dict[str, int] | None = Field(
        None, description="Per gated layer, the unit count budgets refer to (compaction)."
    )
    ungated: list[str] = Field(
        [], description="Layers built without a gate (compaction folds always-on gates away)."
    )

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        if self.image_hw is not None and min(self.image_hw) < 8:
            raise ValueError(f"image_hw must be at least 8x8, got {self.image_hw}")
        if not self.pixels and (self.image_hw is not None or self.image_channels is not None):
            raise ValueError("image_hw and image_channels must be unset when pixels is false")
        if self.pixels and self.image_hw is not None:
            h, w = self.image_hw  # the conv stack: no padding (encoders.py)
            k = self.encoder.kernel_size
            for i, stride in enumerate(self.encoder.strides):
                if min(h, w) < k:
                    raise ValueError(
                        f"image_hw {self.image_hw} is too small for encoder.strides "
                        f"{self.encoder.strides} with kernel_size {k}: conv {i} gets {h}x{w}"
                    )
                h, w = (h - k) // stride + 1, (w - k) // stride + 1
        if self.ref_units is not None:
            units = {f"head.layers.{i}": n for i, n in enumerate(self.head.hidden)}
            if self.pixels:
                units |= {f"encoder.layers.{i}": n for i, n in enumerate(self.encoder.channels)}
            gated = {k: n for k, n in units.items() if k not in self.ungated}
            unknown = sorted(set(self.ref_units) - set(units))
            missing = sorted(set(gated) - set(self.ref_units))
            if unknown or missing:
                raise ValueError(
                    f"ref_units must name every gated layer ({', '.join(sorted(gated))}); "
                    f"unknown {unknown}, missing {missing}"
                )
            for name, ref in self.ref_units.items():
                if ref < units[name]:  # b = 1 would cap the layer below its own units
                    raise ValueError(
                        f"ref_units.{name}: must be >= the layer's {units[name]} units, got {ref}"
                    )
        return self


class EnvConfig(StrictModel):
    """The gymnasium environment a config trains and evaluates on."""

    id: str | None = Field(None, description="Gymnasium id, e.g. swan_envs/Reach-v0.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="gym.make keyword args.")


class DemosConfig(StrictModel):
    """Expert demonstrations for imitation (collected if the file does not exist)."""

    path: str = Field("data/demos.hdf5", description="HDF5 demo file (robomimic layout).")
    episodes: int = Field(200, ge=1, description="Episodes to collect if the file is missing.")
    workers: int = Field(2, ge=1, description="Parallel env workers for collection.")
    only_success: bool = Field(True, description="Keep only successful expert episodes.")


class BCConfig(StrictModel):
    """Behaviour cloning with the sandwich rule (DESIGN.md §3)."""

    steps: int = Field(10_000, ge=1, description="Gradient steps of the initial BC phase.")
    batch_size: int = Field(128, ge=1, description="Samples per gradient step (per process).")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(200, ge=0, description="Linear learning-rate warm-up steps.")
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="After warm-up.")
    grad_clip: float = Field(1.0, gt=0, description="Max gradient norm.")
    shift_pad: int = Field(4, ge=0, description="Random-shift augmentation in pixels (0: off).")
    colour_mix: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Random colour mix augmentation, strength s (0: off): per image "
        "x' = clip((I + U(-s, s)) x + U(-s/2, s/2)), for visual variation (colours, light).",
    )
    sandwich: bool = Field(True, description="Train b=1, b_min and random budgets each step.")
    b_min: float = Field(0.25, gt=0, le=1, description="Smallest budget of the sandwich.")
    n_random_budgets: int = Field(1, ge=0, description="Random budgets per step.")
    budget_levels: list[float] = Field(
        [], description="Draw the random budgets from these levels (empty: uniform)."
    )
    distill_weight: float = Field(
        0.5, ge=0, le=1, description="Weight of distillation from b=1 for lower budgets."
    )
    low_weight: float = Field(
        1.0, ge=0, description="Weight of each lower-budget pass in the sandwich loss."
    )
    compile: bool = Field(
        False,
        description="torch.compile the training forward pass (1.5x faster sandwich steps on "
        "CPU once compiled; falls back to eager where compiling fails).",
    )

    @model_validator(mode="after")
    def _check_levels(self) -> BCConfig:
        if any(not self.b_min <= b <= 1 for b in self.budget_levels):
            raise ValueError(f"budget_levels must lie in [b_min, 1], got {self.budget_levels}")
        return self


class DaggerConfig(StrictModel):
    """DAgger: roll out, label with the expert, aggregate, retrain (Ross et al. 2011)."""

    rounds: int = Field(0, ge=0, description="DAgger rounds after BC (0: BC only).")
    episodes_per_round: int = Field(20, ge=1, description="Rollout episodes per round.")
    steps_per_round: int = Field(2000, ge=1, description="Gradient steps after each round.")
    beta0: float = Field(0.5, ge=0, le=1, description="P(execute expert action) in round 1.")
    beta_decay: float = Field(0.5, ge=0, le=1, description="beta_r = beta0 * decay^(r-1).")
    budget: float | list[float] = Field(
        1.0,
        description="Budget of the rollout policy; a list splits each round's episodes "
        "evenly across its budgets (on-policy states for the low budgets too).",
    )

    @field_validator("budget")
    @classmethod
    def _check_budget(cls, budget: float | list[float]) -> float | list[float]:
        values = budget if isinstance(budget, list) else [budget]
        if not values or any(not 0 < b <= 1 for b in values):
            raise ValueError(f"budgets must be in (0, 1], got {budget!r}")
        return budget


class EvalConfig(StrictModel):
    """Evaluation in simulation (during training and by ``swan eval``)."""

    episodes: int = Field(20, ge=1, description="Episodes per budget.")
    every: int = Field(2000, ge=0, description="Evaluate every N training steps (0: only at end).")
    budgets: list[float] = Field([1.0, 0.5, 0.25], description="Budgets to evaluate.")
    workers: int = Field(2, ge=1, description="Parallel env workers.")
    seed: int = Field(10_000, ge=0, description="Seed of the first evaluation episode.")
    at_end: bool = Field(True, description="Evaluate once more when training ends.")

    @field_validator("budgets")
    @classmethod
    def _check_budgets(cls, budgets: list[float]) -> list[float]:
        # a field validator, so the error's location is eval.budgets (not eval)
        if not budgets or any(not 0 < b <= 1 for b in budgets):
            raise ValueError("budgets must be non-empty, each in (0, 1]")
        return budgets


class LogConfig(StrictModel):
    """Logging and checkpointing cadence."""

    log_every: int = Field(50, ge=1, description="Write metrics every N steps.")
    checkpoint_every: int = Field(2000, ge=1, description="Checkpoint every N steps.")
    tensorboard: bool = Field(True, description="Write TensorBoard events.")


class TeacherConfig(StrictModel):
    """The state-based RL teacher that method 'distill' distils into a pixel student."""

    config: str | None = Field(
        None, description="RL config of the teacher, trained into <run>/teacher unless run is set."
    )
    run: str | None = Field(None, description="A finished RL run directory to use as the teacher.")


class RLConfig(StrictModel):
    """Reinforcement learning with stable-baselines3 (methods 'ppo' and 'sac')."""

    total_timesteps: int = Field(100_000, ge=1, description="Environment steps in all.")
    n_envs: int = Field(1, ge=1, description="Parallel environments (SB3 vector env).")
    subproc: bool = Field(
        True, description="SubprocVecEnv when n_envs > 1 (False: DummyVecEnv in this process)."
    )
    hyperparams: dict[str, Any] = Field(
        default_factory=dict,
        description="SB3 keyword arguments of PPO / SAC (n_steps, batch_size, learning_rate, ...).",
    )
    normalize: bool = Field(False, description="VecNormalize the proprio observations.")
    norm_reward: bool = Field(True, description="With normalize: also normalise rewards.")
    critic_hidden: list[int] = Field([64, 64], description="Width of each critic hidden layer.")
    critic_gated: bool = Field(True, description="SWAN gates on the critic's hidden layers.")
    critic_sparsity_weight: float = Field(
        0.0, ge=0, description="Sparsity pressure on the critic's gates (the actor: policy.gate)."
    )
    share_features_extractor: bool = Field(
        True, description="PPO: the critic reads the actor's features (pixels: one encoder)."
    )
    log_std_init: float = Field(0.0, description="PPO: initial log std of the Gaussian.")
    ortho_init: bool = Field(True, description="PPO: SB3's orthogonal initialisation.")
    sandwich: bool = Field(
        False, description="Budget-robust RL: lower budgets distilled from b=1 each update."
    )
    b_min: float = Field(0.25, gt=0, le=1, description="Smallest budget of the sandwich.")
    n_random_budgets: int = Field(1, ge=0, description="Random budgets per update.")
    budget_levels: list[float] = Field(
        [], description="Draw the random budgets from these levels (empty: uniform)."
    )
    distill_weight: float = Field(1.0, ge=0, description="Weight of the in-place distillation.")
    torch_threads: int = Field(1, ge=1, description="torch threads (small nets: 1 is fastest).")
    log_interval: int = Field(
        1, ge=1, description="SB3 log_interval (PPO: rollouts, SAC: episodes)."
    )
    save_replay_buffer: bool = Field(
        True, description="SAC: keep the replay buffer in checkpoints (exact resume)."
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if not self.critic_hidden or min(self.critic_hidden) < 1:
            raise ValueError("critic_hidden must list at least one layer, each >= 1 wide")
        if any(not self.b_min <= b <= 1 for b in self.budget_levels):
            raise ValueError(f"budget_levels must lie in [b_min, 1], got {self.budget_levels}")
        return self


class ExperimentConfig(StrictModel):
    """Top level of a YAML file in configs/."""

    name: str = Field("swan", min_length=1, description="Run name (runs/<name>).")
    # numpy's legacy seeding (np.random.seed, SB3's set_random_seed) takes < 2**32
    seed: int = Field(0, ge=0, lt=2**32, description="Global random seed.")
    method: Literal["bc", "dagger", "ppo", "sac", "distill"] = Field(
        "bc", description="Training method (imitation, SB3 RL, or teacher -> student distillation)."
    )
    env: EnvConfig = Field(default_factory=EnvConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    demos: DemosConfig = Field(default_factory=DemosConfig)
    bc: BCConfig = Field(default_factory=BCConfig)
    dagger: DaggerConfig = Field(default_factory=DaggerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    rl: RLConfig = Field(default_factory=RLConfig)

    @model_validator(mode="after")
    def _check_method(self) -> ExperimentConfig:
        teacher = self.rl.teacher
        if self.method == "distill" and (teacher.config is None) == (teacher.run is None):
            raise ValueError(
                "method 'distill' needs exactly one of rl.teacher.config, rl.teacher.run"
            )
        return self


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with three of YAML 1.1's surprises taken out.

    PyYAML follows YAML 1.1, where ``1e-3`` and ``1.0e5`` (no dot, or no exponent sign) are
    *strings*: a free-form field (``rl.hyperparams.learning_rate: 3e-4``) would reach SB3 as
    text and ``bc.steps: 1e4`` fail as "not an integer"; here they are floats, as in YAML
    1.2 and JSON. ``2024-05-01`` stays a string (1.1 makes it a ``datetime.date``, which no
    field takes, ``name`` included). A key given twice in one mapping is an error (1.1
    keeps the last one silently: a second ``bc:`` section would drop the first).
    """


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_EXPONENT_FLOAT = re.compile(r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?|[-+]?\.[0-9_]+)[eE][-+]?[0-9]+$")
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789.")
)


class _ConfigDumper(yaml.SafeDumper):
    """Quotes the text ``_ConfigLoader`` would read as a float (``name: "1e3"``)."""


_ConfigDumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789.")
)


def _construct_mapping(
    loader: _ConfigLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base`, whose keys an explicit key may override
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable: SafeLoader's own error follows
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_ConfigLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def parse_yaml(text: str) -> Any:
    """Parse config YAML (safe: plain data only) with :class:`_ConfigLoader`'s rules.

    Raises:
        yaml.YAMLError: bad syntax or a duplicate key; ``ValueError`` / ``RecursionError``
            for values Python refuses to build (a 5000-digit integer, absurd nesting).
    """
    # what yaml.safe_load does, with the SafeLoader subclass above (no Python objects)
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own text spans several, with a caret)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. policy.gate.tau=0.5)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key segment")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {key}: cannot parse value {raw!r}: {_yaml_problem(e)}"
            ) from None
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:  # absent, or a section left empty in the YAML (`env:`)
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {p!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _union_tag(loc: Sequence[int | str]) -> int | None:
    """Index of the union member's type name in an error location
    (``("dagger", "budget", "list[float]", 1)`` -> 2), or None."""
    for i, part in enumerate(loc):
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part):
            return i
    return None


_TYPE_TAGS = {"float", "int", "str", "bool", "none", "list", "dict", "tuple"}


def format_validation_error(err: ValidationError) -> str:
    """One line: ``field.path: message (got value)``, plus how many more errors."""
    errors = err.errors()
    first = errors[0]
    tag = _union_tag(first["loc"])
    if tag is not None:  # one error per union member: the one that got furthest says most
        prefix = first["loc"][:tag]
        branches = [e for e in errors if e["loc"][:tag] == prefix and _union_tag(e["loc"]) == tag]
        first = max(branches, key=lambda e: len(e["loc"]))
        errors = [first, *(e for e in errors if e["loc"][:tag] != prefix)]
    loc = ".".join(str(p) for i, p in enumerate(first["loc"]) if i != tag) or "<root>"
    msg = f"{loc}: {first['msg']}"
    if first["type"] != "missing" and "input" in first and not isinstance(first["input"], dict):
        msg += f" (got {first['input']!r})"
        if first["type"] == "string_type" and isinstance(first["input"], (bool, int, float)):
            # `name: no` / `--set name=2024`: YAML made a bool or number of the text
            msg += "; YAML reads yes/no/on/off as booleans and digits as numbers: quote the text"
    # a union's members count once
    rest = {tuple(e["loc"][: _union_tag(e["loc"])]) for e in errors[1:]}
    if rest:
        msg += f" (and {len(rest)} more)"
    return msg


def validate_config(data: Any, model: type[StrictModel] = ExperimentConfig) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config, apply overrides, validate.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key, wrong type or value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(e)}") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:  # an empty file: every default
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg: ExperimentConfig = validate_config(apply_overrides(data, overrides))
    return cfg


def dump_config(cfg: StrictModel) -> str:
    """YAML text of a resolved config (what runs/<name>/config.yaml holds)."""
    return yaml.dump(cfg.model_dump(mode="json"), Dumper=_ConfigDumper, sort_keys=False)


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs (nested mappings)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(k for k in new if k not in old)]
        return [
            line for k in keys for line in config_changes(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def resume_changes(
    saved: Path, cfg: ExperimentConfig, checkpoint_policy: PolicyConfig
) -> list[str]:
    """What resuming a run with ``cfg`` changes against the run's ``saved`` config.yaml.

    ``cfg.policy`` must resolve to the checkpoint's architecture (a run keeps it), so
    ``cfg`` here carries the resolved policy; any other changed setting is returned.

    Raises:
        ConfigError: the policies differ, naming each field as ``--set`` does.
    """
    changed = config_changes(
        checkpoint_policy.model_dump(mode="json"), cfg.policy.model_dump(mode="json"), "policy."
    )
    if changed:
        raise ConfigError(
            f"--resume: the config's policy differs from the checkpoint's "
            f"({'; '.join(changed)}); a run keeps its architecture"
        )
    if not saved.is_file():
        return []
    new = cfg.model_copy(update={"policy": checkpoint_policy}).model_dump(mode="json")
    return config_changes(yaml.safe_load(saved.read_text()), new)
