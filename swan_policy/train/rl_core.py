"""Shared core of the stable-baselines3 policies (:mod:`swan_policy.train.rl`).

The mechanism by which sparsity pressure and the budget distillation act inside SB3's
unmodified ``train()`` (:func:`attach_aux_loss`, :func:`inject_sparsity`), how SB3's
observations reach a SwanPolicy (:class:`_Layout`), building the actor's SwanPolicy from the
spaces, the forward hooks that read its head (:class:`_HeadTap`), the gated critic trunk
(:class:`SwanFeaturesExtractor`) and the helpers both the PPO and the SAC policy use.
Everything here is re-exported by :mod:`swan_policy.train.rl`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import Tensor, nn

from swan_policy.config import ConfigError, EncoderConfig, GateConfig, PolicyConfig
from swan_policy.envs import SpaceMismatchError, fill_policy_dims
from swan_policy.nn.encoders import GatedConvEncoder
from swan_policy.nn.gates import SwanGate
from swan_policy.nn.heads import GatedMLPHead, ProprioMLP
from swan_policy.nn.layers import GatedConv2d, GatedLinear
from swan_policy.policy import SwanPolicy, gate_options
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
    return fill_policy_dims(cfg, wanted, "the env")


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
                options=gate_options(gate_cfg),
                input_norm=enc_cfg.input_norm,
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


# ----------------------------------------------------------------------------- PPO and SAC
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
