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

**Modules.** This module is the entry point: the PPO/A2C policy, extraction, logging. The
shared core (the mechanism above, the observation layout, :class:`_HeadTap`,
:class:`SwanFeaturesExtractor`) is in :mod:`swan_policy.train.rl_core`, the SAC policy in
:mod:`swan_policy.train.rl_sac`; both are re-exported here, so SB3 ``.zip`` files that name
their classes ``swan_policy.train.rl.<Class>`` keep loading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.common.vec_env import VecNormalize
from torch import Tensor, nn

from swan_policy.config import PolicyConfig
from swan_policy.envs import SpaceMismatchError
from swan_policy.nn.gates import SwanGate
from swan_policy.nn.heads import GatedMLPHead
from swan_policy.policy import SwanPolicy, gate_options
from swan_policy.spec import PIXELS, PROPRIO

# moved out of this module and re-exported (SB3 saves name classes swan_policy.train.rl.X);
# the `X as X` imports keep the rest of the pre-split module's names importable here too
from swan_policy.train.rl_core import (
    SwanFeaturesExtractor,
    _build_swan,
    _default_optimizer_kwargs,
    _HeadTap,
    _module_gates,
    _sandwich_term,
    attach_aux_loss,
    inject_sparsity,
)
from swan_policy.train.rl_core import _AttachLoss as _AttachLoss
from swan_policy.train.rl_core import _Layout as _Layout
from swan_policy.train.rl_core import _no_injection as _no_injection
from swan_policy.train.rl_core import _policy_config as _policy_config
from swan_policy.train.rl_sac import SwanContinuousCritic, SwanSACActor, SwanSACPolicy

__all__ = [
    "GateStatsCallback",
    "SwanActorCriticPolicy",
    "SwanContinuousCritic",
    "SwanFeaturesExtractor",
    "SwanSACActor",
    "SwanSACPolicy",
    "actor_active_fraction",
    "attach_aux_loss",
    "extract_swan_policy",
    "fold_obs_normalization",
    "gate_groups",
    "inject_sparsity",
    "swan_of",
    "vec_normalize_proprio",
]


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
            options=gate_options(critic_gate),
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
