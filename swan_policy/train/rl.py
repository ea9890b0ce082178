"""stable-baselines3 integration: SWAN-gated PPO and SAC policies (issue 5).

SB3's own algorithms, with these policy classes::

    from stable_baselines3 import PPO, SAC
    from swan_policy.train.rl import GateStatsCallback, SwanActorCriticPolicy, extract_swan_policy

    kwargs = {"policy_config": {"pixels": False, "head": {"hidden": [64, 64], "proprio_hidden": 0},
                                "gate": {"sparsity_weight": 0.01}}}
    model = PPO(SwanActorCriticPolicy, "InvertedPendulum-v5", policy_kwargs=kwargs)
    model.learn(100_000, callback=GateStatsCallback())   # gates/... in TensorBoard
    policy = extract_swan_policy(model)   # a SwanPolicy: swan eval, compaction, export

**The actor is a SwanPolicy.** Its deterministic action is ``SwanPolicy.forward`` itself, so
extraction is exact: PPO's Gaussian mean is the policy's bounded action (tanh, unscaled to
the action bounds); SAC's squashed Gaussian has the SwanPolicy head's pre-tanh output as its
mean, so SB3's deterministic ``predict`` (tanh, then unscale) equals ``SwanPolicy.forward``.
What the RL heads need beyond the action -- the head's input features (a shared PPO critic)
and its last hidden layer (SAC's state-dependent log std) -- is read by forward hooks on the
head (:class:`_HeadTap`), so the action path is never a re-implementation. The critics are
gated MLPs (:class:`~swan_policy.nn.heads.GatedMLPHead`); a critic that does not share the
actor's features has its own gated trunk, :class:`SwanFeaturesExtractor` (gated CNN for
pixels + proprio MLP; usable with SB3's stock policies as well).

**Sparsity pressure during RL, without touching SB3's ``train()``.** The gate's backward
adds the regulariser's gradient (``SwanGate.inject_weight``, DESIGN.md §3): the actor's gate
``i`` gets ``policy.gate.sparsity_weight * n_i / N`` (``n_i`` its units, ``N`` all gated
units), so any backward pass through SB3's loss also yields exactly the gradient of
``sparsity_weight * SwanPolicy.sparsity_loss()`` -- behaviour cloning's unit-weighted term,
``l1`` or ``target`` mode -- with no loss term, no second graph, and SB3's logged losses
unchanged (:func:`inject_sparsity`). The critic's gates get ``critic_sparsity_weight`` the same
way (default 0: the critic is not deployed, so its sparsity saves nothing).

**Budget-robust RL** (``sandwich={...}``, DESIGN.md §3): every update also runs the actor at
``b_min`` and at random budgets (or ladder levels) and distils those outputs towards the
full-budget output (detached). That term is *attached* to a tensor SB3's loss uses (PPO: the
log-probabilities; SAC: the Gaussian mean) by :func:`attach_aux_loss`, an identity whose
backward also sends gradient 1 into the term, so SB3's ``loss.backward()`` computes
``d(loss_sb3 + distill)/d(theta)``. The lower-budget passes carry no sparsity pressure (as
in BC, only the ``b = 1`` pass does). Rollouts always run at ``b = 1``.

**Pixels**: SB3 wraps channels-last image observations in ``VecTransposeImage``; the policies
accept either layout (and the float copies SB3's rollout buffers keep) and hand the
SwanPolicy HWC uint8, its own contract. ``normalize_images`` is never used: the encoder
scales pixels itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import (
    DiagGaussianDistribution,
    SquashedDiagGaussianDistribution,
)
from stable_baselines3.common.policies import (
    ActorCriticPolicy,
    BaseModel,
    BasePolicy,
    ContinuousCritic,
)
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.common.vec_env import VecNormalize
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, Actor, SACPolicy
from torch import Tensor, nn

from swan_policy.config import ConfigError, EncoderConfig, GateConfig, PolicyConfig
from swan_policy.envs import SpaceMismatchError
from swan_policy.nn.encoders import GatedConvEncoder
from swan_policy.nn.gates import SwanGate
from swan_policy.nn.heads import GatedMLPHead, ProprioMLP
from swan_policy.nn.layers import GatedConv2d, GatedLinear, GateOptions
from swan_policy.policy import SwanPolicy
from swan_policy.spec import PIXELS, PROPRIO
from swan_policy.train.losses import sandwich_budgets


# ----------------------------------------------------------------------------- the mechanism
class _AttachLoss(torch.autograd.Function):
    """Forward: ``x`` unchanged. Backward: ``x``'s gradient, and 1 for ``aux``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, aux: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, torch.ones((), dtype=grad.dtype, device=grad.device)


def attach_aux_loss(x: Tensor, aux: Tensor | None) -> Tensor:
    """``x`` unchanged, but any backward pass through it also minimises the scalar ``aux``.

    How the sparsity term and the budget distillation act inside SB3's unmodified
    ``train()``: ``loss(x).backward()`` yields ``d loss/d theta + d aux/d theta``.
    """
    if aux is None or not aux.requires_grad or not torch.is_grad_enabled():
        return x
    return cast(Tensor, _AttachLoss.apply(x, aux))


def inject_sparsity(gates: Sequence[SwanGate], weight: float) -> None:
    """Let the gates' backward add ``weight`` x their unit-weighted sparsity term's gradient.

    Gate ``i`` gets ``inject_weight = weight * n_i / sum(n)``: the gradient of
    ``weight * SwanPolicy.sparsity_loss()`` (l1 or target mode), applied whenever a loss
    is backpropagated through the gates -- inside SB3's ``train()`` for instance.
    """
    total = sum(g.num_units for g in gates)
    for g in gates:
        g.inject_weight = weight * g.num_units / total if total else 0.0


@contextmanager
def _no_injection(gates: Sequence[SwanGate]) -> Iterator[None]:
    """Forward passes inside carry no sparsity pressure (the sandwich's lower budgets)."""
    saved = [g.inject_weight for g in gates]
    for g in gates:
        g.inject_weight = 0.0
    try:
        yield
    finally:
        for g, w in zip(gates, saved, strict=True):
            g.inject_weight = w


# ----------------------------------------------------------------------------- observations
class _Layout:
    """How SB3 hands observations over: flat Box, or a dict with HWC/CHW pixels."""

    def __init__(self, observation_space: spaces.Space[Any]) -> None:
        self.flat = False
        self.chw = False
        self.pixels: tuple[int, int, int] | None = None  # (H, W, C)
        if isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1:
            self.flat, self.proprio_dim = True, int(observation_space.shape[0])
            return
        keys: set[str] = set()
        if isinstance(observation_space, spaces.Dict):
            keys = set(observation_space.spaces)
        if not isinstance(observation_space, spaces.Dict) or keys not in (
            {PROPRIO},
            {PIXELS, PROPRIO},
        ):
            raise SpaceMismatchError(
                f"expected a flat Box or a Dict observation space with keys ['{PIXELS}', "
                f"'{PROPRIO}'] or ['{PROPRIO}'], got {observation_space}"
            )
        proprio = observation_space.spaces[PROPRIO]
        if not isinstance(proprio, spaces.Box) or len(proprio.shape) != 1:
            raise SpaceMismatchError(f"observation '{PROPRIO}' must be a 1-D Box, got {proprio}")
        self.proprio_dim = int(proprio.shape[0])
        if PIXELS in keys:
            px = observation_space.spaces[PIXELS]
            if not (isinstance(px, spaces.Box) and is_image_space(px)):
                raise SpaceMismatchError(f"observation '{PIXELS}' must be a uint8 image, got {px}")
            # SB3's own test for "transposed by VecTransposeImage"
            self.chw = is_image_space_channels_first(px)
            s = px.shape
            self.pixels = (s[1], s[2], s[0]) if self.chw else (s[0], s[1], s[2])

    def swan_obs(self, obs: PyTorchObs) -> dict[str, Tensor]:
        """SB3's observation tensors -> the SwanPolicy's ``{"pixels": HWC uint8, "proprio"}``."""
        if self.flat:
            assert isinstance(obs, Tensor)
            return {PROPRIO: obs.float()}
        assert isinstance(obs, Mapping)
        out = {PROPRIO: obs[PROPRIO].float()}
        if self.pixels is not None:
            px = obs[PIXELS]
            if self.chw:
                px = px.permute(0, 2, 3, 1)
            if px.dtype != torch.uint8:  # SB3's rollout buffers hold float copies (exact ints)
                px = px.round().clamp(0, 255).to(torch.uint8)
            out[PIXELS] = px
        return out


def _policy_config(
    config: PolicyConfig | Mapping[str, Any] | None,
    layout: _Layout,
    action_space: spaces.Space[Any],
) -> PolicyConfig:
    """The policy config with dims from the spaces (set dims must agree)."""
    if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
        raise SpaceMismatchError(f"action space must be a 1-D Box, got {action_space}")
    if config is None:
        config = {}
    cfg = config if isinstance(config, PolicyConfig) else PolicyConfig.model_validate(dict(config))
    if layout.pixels is None and cfg.pixels and not layout.flat:
        cfg = cfg.model_copy(update={"pixels": False})  # proprio-only dict env
    if layout.flat:
        cfg = cfg.model_copy(update={"pixels": False})
    if layout.pixels is not None and not cfg.pixels:
        raise SpaceMismatchError(
            "the env has pixel observations but policy.pixels is false; use a state env "
            "(e.g. swan_envs obs_mode='state') for a proprio-only policy"
        )
    wanted: dict[str, Any] = {
        "proprio_dim": layout.proprio_dim,
        "action_dim": int(action_space.shape[0]),
    }
    if layout.pixels is not None:
        wanted["image_hw"] = layout.pixels[:2]
        wanted["image_channels"] = layout.pixels[2]
    update = {}
    for field, value in wanted.items():
        current = getattr(cfg, field)
        if current is None:
            update[field] = value
        elif (tuple(current) if isinstance(current, tuple | list) else current) != value:
            raise SpaceMismatchError(f"policy.{field} is {current} but the env has {value}")
    return cfg.model_copy(update=update)


def _build_swan(
    config: PolicyConfig | Mapping[str, Any] | None,
    observation_space: spaces.Space[Any],
    action_space: spaces.Space[Any],
) -> tuple[SwanPolicy, _Layout]:
    layout = _Layout(observation_space)
    try:
        cfg = _policy_config(config, layout, action_space)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        if isinstance(e, SpaceMismatchError):
            raise
        raise ConfigError(f"policy_config: {e}") from None
    swan = SwanPolicy(cfg)
    assert isinstance(action_space, spaces.Box)
    with torch.no_grad():  # action bounds from the env; proprio statistics stay identity
        swan.action_low.copy_(torch.as_tensor(action_space.low, dtype=torch.float32))
        swan.action_high.copy_(torch.as_tensor(action_space.high, dtype=torch.float32))
    swan.track_stats = False  # MAC bookkeeping off in rollouts; per-gate statistics stay on
    return swan, layout


class _HeadTap:
    """Reads what a SwanPolicy's head saw and produced in its last (masked) forward.

    ``features``: the head's input (encoder keypoints + proprio features); ``latent``: the
    last hidden layer's output; ``pre``: the pre-tanh actions.
    """

    def __init__(self, head: GatedMLPHead) -> None:
        self.features: Tensor | None = None
        self.latent: Tensor | None = None
        self.pre: Tensor | None = None
        head.register_forward_pre_hook(self._on_input)
        head.out.register_forward_pre_hook(self._on_latent)
        head.register_forward_hook(self._on_output)

    def _on_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.features = args[0]

    def _on_latent(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.latent = args[0]

    def _on_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.pre = output[0]


def _gate_options(gate: GateConfig) -> GateOptions:
    return GateOptions(gate.tau, gate.sparsity, gate.target_rate, gate.init_bias)


def _module_gates(*modules: nn.Module | None) -> dict[str, SwanGate]:
    out: dict[str, SwanGate] = {}
    for m in modules:
        if m is None:
            continue
        for name, sub in m.named_modules():
            if isinstance(sub, GatedConv2d | GatedLinear) and sub.gate is not None:
                out[name] = sub.gate
    return out


# ----------------------------------------------------------------------------- gated trunk
class SwanFeaturesExtractor(BaseFeaturesExtractor):
    """Gated trunk as an SB3 features extractor: gated CNN (pixels) + proprio MLP.

    The critics' own trunk; with SB3's stock policies pass
    ``policy_kwargs={"features_extractor_class": SwanFeaturesExtractor,
    "normalize_images": False}`` (the encoder scales pixels itself).

    Args:
        observation_space: a Dict space ``{"pixels"?, "proprio"}`` or a flat Box.
        encoder: the conv stack (pixels only).
        proprio_hidden: proprio MLP width (0: the vector itself).
        gate: gate hyper-parameters (``enabled=False``: an ungated trunk).
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        encoder: EncoderConfig | Mapping[str, Any] | None = None,
        proprio_hidden: int = 64,
        gate: GateConfig | Mapping[str, Any] | None = None,
    ) -> None:
        layout = _Layout(observation_space)
        enc_cfg = (
            encoder if isinstance(encoder, EncoderConfig) else EncoderConfig(**(encoder or {}))
        )
        gate_cfg = gate if isinstance(gate, GateConfig) else GateConfig(**(gate or {}))
        enc: GatedConvEncoder | None = None
        if layout.pixels is not None:
            enc = GatedConvEncoder(
                layout.pixels[2],
                layout.pixels[:2],
                enc_cfg.channels,
                enc_cfg.strides,
                enc_cfg.kernel_size,
                gated=gate_cfg.enabled,
                options=_gate_options(gate_cfg),
            )
        proprio = ProprioMLP(layout.proprio_dim, proprio_hidden)
        super().__init__(observation_space, (enc.out_dim if enc else 0) + proprio.out_dim)
        self.layout = layout
        self.encoder = enc
        self.proprio = proprio

    def forward(self, observations: PyTorchObs, budget: float = 1.0) -> Tensor:
        obs = self.layout.swan_obs(observations)
        p = self.proprio(obs[PROPRIO])
        if self.encoder is None:
            return p
        return torch.cat([self.encoder(obs[PIXELS], budget)[0], p], dim=1)


# ----------------------------------------------------------------------------- PPO / A2C
class SwanActorCriticPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy (PPO, A2C) whose actor is a :class:`SwanPolicy`.

    The Gaussian's mean is ``SwanPolicy.forward`` (bounded action in env units) and its log
    std a state-independent parameter, as in SB3's ``MlpPolicy``; the value function is a
    gated MLP on the actor's features (``share_features_extractor=True``, SB3's default for
    PPO) or on its own gated trunk. Built through ``BasePolicy.__init__`` (SB3's
    ``ActorCriticPolicy.__init__`` would build an MLP extractor this class does not use); it
    implements the interface PPO and A2C call: ``forward``, ``evaluate_actions``,
    ``get_distribution``, ``predict_values``, ``_predict``.

    Args:
        observation_space / action_space / lr_schedule: from SB3.
        policy_config: the SwanPolicy architecture (dims filled from the spaces);
            ``gate.sparsity_weight`` is the actor's sparsity pressure.
        critic_hidden: width of the value MLP's hidden layers.
        critic_gated: gates on the value MLP (and its own trunk).
        critic_sparsity_weight: sparsity pressure on the critic's gates.
        share_features_extractor: the critic reads the actor's head input.
        sandwich: budget-robust training, ``{"b_min", "n_random_budgets", "budget_levels",
            "distill_weight"}`` (None: off).
        log_std_init: initial log std.
        ortho_init: SB3's orthogonal initialisation (gain sqrt(2), 0.01 on the action
            layer, 1 on the value layer; gate networks keep their own initialisation).
        use_sde: not supported (raises).
        optimizer_class / optimizer_kwargs: as SB3.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        lr_schedule: Schedule,
        policy_config: PolicyConfig | Mapping[str, Any] | None = None,
        critic_hidden: Sequence[int] = (64, 64),
        critic_gated: bool = True,
        critic_sparsity_weight: float = 0.0,
        share_features_extractor: bool = True,
        sandwich: Mapping[str, Any] | None = None,
        log_std_init: float = 0.0,
        ortho_init: bool = True,
        use_sde: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if use_sde:
            raise ValueError("SwanActorCriticPolicy does not support gSDE (use_sde=True)")
        if optimizer_kwargs is None:
            optimizer_kwargs = _default_optimizer_kwargs(optimizer_class, {"eps": 1e-5})
        BasePolicy.__init__(
            self,
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=False,
        )
        self.swan, self.layout = _build_swan(policy_config, observation_space, action_space)
        self._tap = _HeadTap(self.swan.head)
        cfg = self.swan.config
        self.use_sde = False
        self.dist_kwargs = None
        self.ortho_init = ortho_init
        self.log_std_init = log_std_init
        self.share_features_extractor = share_features_extractor
        self.critic_hidden = list(critic_hidden)
        self.critic_gated = critic_gated
        self.critic_sparsity_weight = float(critic_sparsity_weight)
        self.sandwich = dict(sandwich) if sandwich else None
        critic_gate = cfg.gate.model_copy(update={"enabled": critic_gated})
        self.critic_extractor: SwanFeaturesExtractor | None = None
        if not share_features_extractor:
            self.critic_extractor = SwanFeaturesExtractor(
                observation_space, cfg.encoder, cfg.head.proprio_hidden, critic_gate
            )
        critic_in = (
            self.critic_extractor.features_dim if self.critic_extractor else self.swan.head.in_dim
        )
        self.value_head = GatedMLPHead(
            critic_in,
            self.critic_hidden,
            1,
            gated=critic_gated,
            rank=cfg.gate.linear_rank,
            options=_gate_options(critic_gate),
        )
        action_dim = int(self.swan.action_dim)
        self.action_dist = DiagGaussianDistribution(action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        inject_sparsity(list(self.swan.gates().values()), cfg.gate.sparsity_weight)
        critic_gates = list(_module_gates(self.critic_extractor, self.value_head).values())
        inject_sparsity(critic_gates, self.critic_sparsity_weight)
        if ortho_init:
            _ortho_init(self.swan, self.critic_extractor, self.value_head)
        self.optimizer = self.optimizer_class(
            self.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]  # Optimizer's stub has no lr (as in SB3)
            **self.optimizer_kwargs,
        )

    # -- the actor: SwanPolicy.forward ---------------------------------------------------
    def _actor(self, obs: PyTorchObs) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """``(mean, swan_obs, features)``: the SwanPolicy's action and the head's input."""
        sobs = self.layout.swan_obs(obs)
        mean = self.swan(sobs)
        assert self._tap.features is not None
        return mean, sobs, self._tap.features

    def _values(self, obs: PyTorchObs, features: Tensor) -> Tensor:
        if self.critic_extractor is not None:
            features = self.critic_extractor(obs)
        return cast(Tensor, self.value_head(features)[0])

    def forward(
        self, obs: PyTorchObs, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rollout step: actions, values and log-probabilities."""
        mean, _, features = self._actor(obs)
        values = self._values(obs, features)
        dist = self.action_dist.proba_distribution(mean, self.log_std)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, values, dist.log_prob(actions)

    def evaluate_actions(
        self, obs: PyTorchObs, actions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Training forward (PPO's loss): values, log-probabilities (carrying the
        sandwich term, see :func:`attach_aux_loss`) and entropy. The gates' backward adds
        the sparsity pressure (:func:`inject_sparsity`)."""
        mean, sobs, features = self._actor(obs)
        distill = None
        if self.sandwich:
            full = self.swan.normalize_actions(mean)
            distill = _sandwich_term(self.swan, sobs, full, self.sandwich)
        values = self._values(obs, features)
        dist = self.action_dist.proba_distribution(mean, self.log_std)
        log_prob = attach_aux_loss(dist.log_prob(actions), distill)
        return values, log_prob, dist.entropy()

    def get_distribution(self, obs: PyTorchObs) -> DiagGaussianDistribution:
        mean, _, _ = self._actor(obs)
        return cast(
            DiagGaussianDistribution, self.action_dist.proba_distribution(mean, self.log_std)
        )

    def predict_values(self, obs: PyTorchObs) -> Tensor:
        if self.critic_extractor is not None:
            return self._values(obs, torch.empty(0))
        _, _, features = self._actor(obs)
        return self._values(obs, features)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)

    def reset_noise(self, n_envs: int = 1) -> None:
        raise ValueError("SwanActorCriticPolicy does not support gSDE")

    def gate_groups(self) -> dict[str, dict[str, SwanGate]]:
        """``{"actor": SwanPolicy gates, "critic": value-function gates}``."""
        return {
            "actor": self.swan.gates(),
            "critic": _module_gates(self.critic_extractor, self.value_head),
        }

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = BasePolicy._get_constructor_parameters(self)
        data.update(
            policy_config=self.swan.config.model_dump(mode="json"),
            critic_hidden=self.critic_hidden,
            critic_gated=self.critic_gated,
            critic_sparsity_weight=self.critic_sparsity_weight,
            share_features_extractor=self.share_features_extractor,
            sandwich=self.sandwich,
            log_std_init=self.log_std_init,
            ortho_init=self.ortho_init,
            lr_schedule=self._dummy_schedule,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data


def _default_optimizer_kwargs(
    optimizer_class: type[torch.optim.Optimizer], sb3_defaults: dict[str, Any]
) -> dict[str, Any]:
    """SB3's defaults, plus Adam's multi-tensor ``foreach`` implementation: gate networks
    add three parameter tensors per layer, and Adam's per-tensor loop was a large share
    of an update of these small networks on CPU."""
    if optimizer_class is torch.optim.Adam:
        return {**sb3_defaults, "foreach": True}
    return {}


def _sandwich_term(
    swan: SwanPolicy,
    sobs: dict[str, Tensor],
    full: Tensor,
    sandwich: Mapping[str, Any] | None,
) -> Tensor | None:
    """In-place distillation of lower budgets towards the full-budget output ``full``
    (normalised actions), weighted by ``distill_weight`` (None when off or not training)."""
    if not sandwich or not torch.is_grad_enabled() or not swan.training:
        return None
    budgets = sandwich_budgets(
        float(sandwich.get("b_min", 0.25)),
        int(sandwich.get("n_random_budgets", 1)),
        levels=list(sandwich.get("budget_levels", [])),
    )[1:]
    if not budgets:
        return None
    target = full.detach()
    with _no_injection(list(swan.gates().values())):
        terms = [F.mse_loss(swan.forward_normalized(sobs, b), target) for b in budgets]
    return float(sandwich.get("distill_weight", 1.0)) * torch.stack(terms).sum()


@torch.no_grad()
def _ortho_init(
    swan: SwanPolicy, critic_extractor: SwanFeaturesExtractor | None, value_head: GatedMLPHead
) -> None:
    """SB3's PPO initialisation on the computing layers; gate networks are left alone
    (their bias sets the initial open fraction)."""
    gain = float(np.sqrt(2))

    def ortho(layer: nn.Linear | nn.Conv2d, g: float) -> None:
        nn.init.orthogonal_(layer.weight, gain=g)
        if layer.bias is not None:
            layer.bias.zero_()

    trunks = [(swan.encoder, swan.proprio)]
    if critic_extractor is not None:
        trunks.append((critic_extractor.encoder, critic_extractor.proprio))
    for encoder, proprio in trunks:
        for conv in encoder.convs if encoder is not None else []:
            ortho(conv.conv, gain)
        if proprio.linear is not None:
            ortho(proprio.linear, gain)
    for head, out_gain in ((swan.head, 0.01), (value_head, 1.0)):
        for hidden in head.hidden:
            ortho(hidden.linear, gain)
        ortho(head.out, out_gain)


# ----------------------------------------------------------------------------- SAC
class SwanSACActor(Actor):
    """SAC actor whose squashed Gaussian's mean (pre-tanh) is the SwanPolicy head's output.

    The log std is a linear map of the head's last hidden layer (SB3's state-dependent
    std). Built through ``BasePolicy.__init__`` (SB3's ``Actor.__init__`` builds an MLP this
    class does not use); implements what SAC calls: ``forward``, ``action_log_prob``,
    ``get_action_dist_params``, ``_predict``.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Box,
        policy_config: PolicyConfig | Mapping[str, Any] | None = None,
        sandwich: Mapping[str, Any] | None = None,
    ) -> None:
        BasePolicy.__init__(
            self, observation_space, action_space, normalize_images=False, squash_output=True
        )
        self.swan, self.layout = _build_swan(policy_config, observation_space, action_space)
        self._tap = _HeadTap(self.swan.head)
        self.sandwich = dict(sandwich) if sandwich else None
        self.use_sde = False
        self.sde_features_extractor = None
        self.clip_mean = 0.0
        action_dim = int(self.swan.action_dim)
        latent_dim = self.swan.head.hidden[-1].num_units
        self.log_std = nn.Linear(latent_dim, action_dim)  # type: ignore[assignment]  # SB3 Actor's attr type
        gates = list(self.swan.gates().values())
        inject_sparsity(gates, self.swan.config.gate.sparsity_weight)
        self.action_dist = SquashedDiagGaussianDistribution(action_dim)  # type: ignore[assignment]  # ditto

    def get_action_dist_params(self, obs: PyTorchObs) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(mean = SwanPolicy pre-tanh actions, log std, {})``; in training the mean
        carries the sandwich term (:func:`attach_aux_loss`)."""
        sobs = self.layout.swan_obs(obs)
        squashed = self.swan.forward_normalized(sobs)  # = tanh(pre): SB3 squashes pre itself
        pre, latent = self._tap.pre, self._tap.latent
        assert pre is not None and latent is not None
        log_std_net = cast(nn.Linear, self.log_std)
        log_std = torch.clamp(log_std_net(latent), LOG_STD_MIN, LOG_STD_MAX)
        if self.sandwich and torch.is_grad_enabled():
            pre = attach_aux_loss(pre, _sandwich_term(self.swan, sobs, squashed, self.sandwich))
        return pre, log_std, {}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = BasePolicy._get_constructor_parameters(self)
        data.update(policy_config=self.swan.config.model_dump(mode="json"), sandwich=self.sandwich)
        return data


class SwanContinuousCritic(ContinuousCritic):
    """``n_critics`` gated Q MLPs on one gated trunk of their own (SB3's layout for SAC).

    Built through ``BaseModel.__init__``; ``forward(obs, actions)`` returns one Q tensor
    per critic. Its gates carry ``critic_sparsity_weight`` (:func:`inject_sparsity`).
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Box,
        policy_config: PolicyConfig,
        critic_hidden: Sequence[int] = (256, 256),
        critic_gated: bool = True,
        critic_sparsity_weight: float = 0.0,
        n_critics: int = 2,
    ) -> None:
        BaseModel.__init__(self, observation_space, action_space, normalize_images=False)
        gate = policy_config.gate.model_copy(update={"enabled": critic_gated})
        self.features_extractor = SwanFeaturesExtractor(
            observation_space, policy_config.encoder, policy_config.head.proprio_hidden, gate
        )
        self.share_features_extractor = False
        self.n_critics = n_critics
        self.critic_sparsity_weight = float(critic_sparsity_weight)
        in_dim = self.features_extractor.features_dim + int(action_space.shape[0])
        self.q_networks: list[nn.Module] = []
        for idx in range(n_critics):
            q_net = GatedMLPHead(
                in_dim,
                list(critic_hidden),
                1,
                gated=critic_gated,
                rank=policy_config.gate.linear_rank,
                options=_gate_options(gate),
            )
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)
        inject_sparsity(list(_module_gates(self).values()), self.critic_sparsity_weight)

    def forward(self, obs: PyTorchObs, actions: Tensor) -> tuple[Tensor, ...]:
        x = torch.cat([self.features_extractor(obs), actions], dim=1)
        qs = [q(x)[0] for q in self.q_networks]
        return tuple(qs)

    def q1_forward(self, obs: PyTorchObs, actions: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.features_extractor(obs)
        return cast(Tensor, self.q_networks[0](torch.cat([features, actions], dim=1))[0])


class SwanSACPolicy(SACPolicy):
    """SB3 SAC policy: :class:`SwanSACActor` + gated :class:`SwanContinuousCritic` (and its
    target copy). The actor and critic trunks are separate (SB3's SAC default).

    Args:
        observation_space / action_space / lr_schedule: from SB3.
        policy_config: the actor's SwanPolicy architecture (``gate.sparsity_weight``: its
            sparsity pressure); the critic trunk uses the same encoder settings.
        critic_hidden / critic_gated / critic_sparsity_weight / n_critics: the Q networks.
        sandwich: budget-robust training (see :class:`SwanActorCriticPolicy`).
        use_sde, share_features_extractor: not supported (must be False).
    """

    actor: SwanSACActor
    critic: SwanContinuousCritic
    critic_target: SwanContinuousCritic

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Box,
        lr_schedule: Schedule,
        policy_config: PolicyConfig | Mapping[str, Any] | None = None,
        critic_hidden: Sequence[int] = (256, 256),
        critic_gated: bool = True,
        critic_sparsity_weight: float = 0.0,
        n_critics: int = 2,
        sandwich: Mapping[str, Any] | None = None,
        use_sde: bool = False,
        share_features_extractor: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if use_sde or share_features_extractor:
            raise ValueError("SwanSACPolicy supports neither gSDE nor a shared features extractor")
        # read by make_actor / make_critic, which SACPolicy.__init__ calls
        self._swan_args: dict[str, Any] = {
            "policy_config": policy_config,
            "critic_hidden": list(critic_hidden),
            "critic_gated": critic_gated,
            "critic_sparsity_weight": float(critic_sparsity_weight),
            "sandwich": dict(sandwich) if sandwich else None,
        }
        if optimizer_kwargs is None:
            optimizer_kwargs = _default_optimizer_kwargs(optimizer_class, {})
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=list(critic_hidden),
            normalize_images=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            n_critics=n_critics,
            share_features_extractor=False,
        )

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> SwanSACActor:
        assert isinstance(self.action_space, spaces.Box)
        actor = SwanSACActor(
            self.observation_space,
            self.action_space,
            self._swan_args["policy_config"],
            self._swan_args["sandwich"],
        )
        return actor.to(self.device)

    def make_critic(
        self, features_extractor: BaseFeaturesExtractor | None = None
    ) -> SwanContinuousCritic:
        assert isinstance(self.action_space, spaces.Box)
        # the actor is built first: its resolved config gives the critic trunk's settings
        critic = SwanContinuousCritic(
            self.observation_space,
            self.action_space,
            self.actor.swan.config,
            self._swan_args["critic_hidden"],
            self._swan_args["critic_gated"],
            self._swan_args["critic_sparsity_weight"],
            int(self.critic_kwargs["n_critics"]),  # type: ignore[call-overload]  # kwargs: dict[str, Any]
        )
        return critic.to(self.device)

    def gate_groups(self) -> dict[str, dict[str, SwanGate]]:
        """``{"actor": SwanPolicy gates, "critic": Q-network gates}``."""
        return {"actor": self.actor.swan.gates(), "critic": _module_gates(self.critic)}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self._swan_args)
        data["policy_config"] = self.actor.swan.config.model_dump(mode="json")
        for key in ("net_arch", "activation_fn", "use_sde", "log_std_init", "use_expln"):
            data.pop(key, None)
        data.pop("clip_mean", None)
        return data


# ----------------------------------------------------------------------------- extraction
def swan_of(model: BaseAlgorithm | BasePolicy) -> SwanPolicy:
    """The live SwanPolicy inside an SB3 model (or policy) built with these classes."""
    policy = model.policy if isinstance(model, BaseAlgorithm) else model
    if isinstance(policy, SwanActorCriticPolicy):
        return policy.swan
    if isinstance(policy, SwanSACPolicy):
        return policy.actor.swan
    raise TypeError(
        f"{type(policy).__name__} is not a SWAN policy (use SwanActorCriticPolicy or SwanSACPolicy)"
    )


def fold_obs_normalization(
    policy: SwanPolicy, mean: np.ndarray, var: np.ndarray, epsilon: float
) -> None:
    """Fold VecNormalize's ``(x - mean) / sqrt(var + eps)`` into the proprio statistics.

    The policy then expects raw observations: ``new_mean = mean + s * old_mean`` and
    ``new_std = s * old_std`` with ``s = sqrt(var + eps)``. VecNormalize's clipping
    (``clip_obs``) is not folded: observations beyond ``clip_obs`` standard deviations
    (10 by default) act as if unclipped.
    """
    scale = torch.as_tensor(
        np.sqrt(np.asarray(var, dtype=np.float64) + epsilon), dtype=torch.float32
    )
    m = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
    if scale.shape != policy.proprio_mean.shape:
        raise SpaceMismatchError(
            f"normalisation statistics have shape {tuple(scale.shape)}, "
            f"the policy's proprio has {tuple(policy.proprio_mean.shape)}"
        )
    policy.set_normalization(
        m + scale * policy.proprio_mean,
        scale * policy.proprio_std,
        policy.action_low,
        policy.action_high,
    )


def vec_normalize_proprio(vn: VecNormalize) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mean, var)`` VecNormalize applies to the proprio vector (None if it does not)."""
    if not vn.norm_obs:
        return None
    stats: Any = vn.obs_rms
    if isinstance(stats, dict):
        keys = vn.norm_obs_keys or []
        if PIXELS in keys:
            raise SpaceMismatchError("VecNormalize must not normalise 'pixels' (norm_obs_keys)")
        if PROPRIO not in keys:
            return None
        stats = stats[PROPRIO]
    return np.asarray(stats.mean), np.asarray(stats.var)


def extract_swan_policy(model: BaseAlgorithm) -> SwanPolicy:
    """A standalone copy of the model's actor as a :class:`SwanPolicy` (eval mode).

    ``policy.forward(raw_obs)`` equals the SB3 model's deterministic ``predict`` on the
    same observations (normalised by the model's VecNormalize, whose statistics are folded
    into ``proprio_mean``/``proprio_std``), up to float rounding and VecNormalize's clip.
    """
    live = swan_of(model)
    policy = SwanPolicy(live.config)
    policy.load_state_dict(live.state_dict())
    vn = model.get_vec_normalize_env()
    if vn is not None and (stats := vec_normalize_proprio(vn)) is not None:
        fold_obs_normalization(policy, stats[0], stats[1], vn.epsilon)
    return policy.to(live.action_low.device).eval()


# ----------------------------------------------------------------------------- logging
def gate_groups(policy: BasePolicy) -> dict[str, dict[str, SwanGate]]:
    """Gates of a SWAN SB3 policy by group (``actor``, ``critic``); empty otherwise."""
    groups = getattr(policy, "gate_groups", None)
    return groups() if callable(groups) else {}


class GateStatsCallback(BaseCallback):
    """Logs gate statistics of the rollouts through SB3's logger (TensorBoard, CSV, ...).

    Gates count activations in eval mode, which SB3 uses while collecting rollouts. At each
    rollout end this records, over the current window of ``window`` env steps,
    ``gates/<group>/<layer>`` (active fraction per layer) and ``gates/<group>_active``
    (unit-weighted over the group's layers), for ``group`` in ``actor`` and ``critic``
    (PPO's value function runs in rollouts; SAC's critics do not, so only the actor is
    logged there).
    """

    def __init__(self, window: int = 2048, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.window = window
        self._window_start = 0

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for group, gates in gate_groups(self.model.policy).items():
            active = total = 0.0
            for name, gate in gates.items():
                n = float(gate.sample_count)
                if not n:
                    continue
                count = float(gate.active_count.sum())
                self.logger.record(f"gates/{group}/{name}", count / (n * gate.num_units))
                active, total = active + count, total + n * gate.num_units
            if total:
                self.logger.record(f"gates/{group}_active", active / total)
        if self.num_timesteps - self._window_start >= self.window:
            for gates in gate_groups(self.model.policy).values():
                for gate in gates.values():
                    gate.reset_stats()
            self._window_start = self.num_timesteps


def actor_active_fraction(policy: BasePolicy) -> float | None:
    """Unit-weighted active fraction of the actor's gates in the current statistics."""
    gates = gate_groups(policy).get("actor", {})
    active = sum(float(g.active_count.sum()) for g in gates.values())
    total = sum(float(g.sample_count) * g.num_units for g in gates.values())
    return active / total if total else None
