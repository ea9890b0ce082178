"""SB3 SAC policy whose actor is a SwanPolicy: :class:`SwanSACPolicy` (issue 5).

The squashed-Gaussian actor (:class:`SwanSACActor`) and the gated twin Q networks
(:class:`SwanContinuousCritic`); see :mod:`swan_policy.train.rl` (which re-exports these
classes) for the design and usage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import BaseModel, BasePolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, Actor, SACPolicy
from torch import Tensor, nn

from swan_policy.config import PolicyConfig
from swan_policy.nn.gates import SwanGate
from swan_policy.nn.heads import GatedMLPHead
from swan_policy.policy import gate_options
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
                options=gate_options(gate),
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
