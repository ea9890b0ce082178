"""SwanPolicy: the one policy contract (DESIGN.md §7).

Every consumer -- imitation, the SB3 adapter, evaluation, compaction, export -- goes
through this class::

    forward(obs_batch, budget=1.0, mode=None) -> actions     # torch, batched
    loss(batch, budget) -> (loss, info)                     # BC / DAgger
    act(obs, budget=1.0) -> np.ndarray                      # one step, numpy in/out
    gate_stats() / reset_gate_stats()
    save_pretrained(dir) / from_pretrained(dir)             # safetensors + config.json

Observations are dicts ``{"pixels": [B, H, W, C] uint8, "proprio": [B, P] float32}``.
Proprio normalisation and action unscaling live in buffers, so a saved policy is
self-contained. Actions come out of a tanh and are unscaled to ``[low, high]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swan_policy import __version__
from swan_policy.config import ConfigError, GateConfig, PolicyConfig, validate_config
from swan_policy.nn import flops
from swan_policy.nn.encoders import GatedConvEncoder
from swan_policy.nn.gates import SwanGate
from swan_policy.nn.heads import GatedMLPHead, ProprioMLP
from swan_policy.nn.layers import Active, GatedConv2d, GatedLinear, GateOptions
from swan_policy.serialization import (
    CheckpointError,
    check_state_dict,
    load_json,
    load_tensors,
    save_json,
    save_tensors,
)
from swan_policy.spec import PIXELS, PROPRIO, ArraySpec, ObservationError, ObsSpec

Mode = Literal["masked", "sparse"]
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def gate_options(gate: GateConfig) -> GateOptions:
    """The layers' gate hyper-parameters from a config's ``gate`` section."""
    return GateOptions(gate.tau, gate.sparsity, gate.target_rate, gate.init_bias, gate.detach_input)


class SwanPolicy(nn.Module):
    """Gated vision-action policy: gated CNN encoder + proprio MLP + gated MLP head.

    With ``config.pixels = False`` there is no encoder: a proprio-only policy for
    state observations (``{"proprio": [B, P]}``), e.g. RL on ``InvertedPendulum-v5``.

    Args:
        config: the architecture (see :class:`PolicyConfig`).
    """

    proprio_mean: Tensor
    proprio_std: Tensor
    action_low: Tensor
    action_high: Tensor

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        dims = ("image_hw", "image_channels") if config.pixels else ()
        unset = [k for k in (*dims, "proprio_dim", "action_dim") if getattr(config, k) is None]
        if unset:
            raise ConfigError(
                f"policy.{', policy.'.join(unset)} not set; "
                "swan_policy.envs.resolve_policy_config fills them from the env"
            )
        assert config.proprio_dim is not None and config.action_dim is not None
        self.pixels = config.pixels
        self.image_hw: tuple[int, int] | None = config.image_hw
        self.image_channels: int | None = config.image_channels
        self.proprio_dim: int = config.proprio_dim
        self.action_dim: int = config.action_dim
        self.config = config
        g = config.gate
        opts = gate_options(g)
        ref = config.ref_units or {}
        n_enc, n_head = len(config.encoder.channels), len(config.head.hidden)
        self.encoder: GatedConvEncoder | None = None
        if config.image_hw is not None and config.image_channels is not None:
            self.encoder = GatedConvEncoder(
                config.image_channels,
                config.image_hw,
                config.encoder.channels,
                config.encoder.strides,
                config.encoder.kernel_size,
                gated=g.enabled,
                options=opts,
                ref_units=[ref[f"encoder.layers.{i}"] for i in range(n_enc)] if ref else None,
                input_norm=config.encoder.input_norm,
            )
        self.proprio = ProprioMLP(self.proprio_dim, config.head.proprio_hidden)
        self.feature_dim = self.encoder.out_dim if self.encoder is not None else 0
        self.head = GatedMLPHead(
            self.feature_dim + self.proprio.out_dim,
            config.head.hidden,
            self.action_dim,
            gated=g.enabled,
            rank=g.linear_rank,
            options=opts,
            ref_units=[ref[f"head.layers.{i}"] for i in range(n_head)] if ref else None,
        )
        self._remove_gates(config.ungated)
        self.register_buffer("proprio_mean", torch.zeros(self.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(self.proprio_dim))
        self.register_buffer("action_low", -torch.ones(self.action_dim))
        self.register_buffer("action_high", torch.ones(self.action_dim))
        self.mode: Mode = "masked"
        self.track_stats = True
        self._last_batch = 0  # batch size of the last forward (0: none yet)
        entries = {PROPRIO: ArraySpec((self.proprio_dim,), "float32")}
        if config.image_hw is not None and config.image_channels is not None:
            entries = {PIXELS: ArraySpec((*config.image_hw, config.image_channels), "uint8")}
            entries[PROPRIO] = ArraySpec((self.proprio_dim,), "float32")
        self._obs_spec = ObsSpec(entries)
        self._macs_sum: dict[str, float] = {}
        self._macs_samples = 0

    # ------------------------------------------------------------------ structure
    @property
    def obs_spec(self) -> ObsSpec:
        """The observation this policy accepts (keys, shapes, dtypes)."""
        return self._obs_spec

    def gated_layers(self) -> dict[str, GatedConv2d | GatedLinear]:
        """Gated layers by name (``encoder.layers.i``, ``head.layers.j``), in order."""
        out: dict[str, GatedConv2d | GatedLinear] = {}
        for i, conv in enumerate(self.encoder.convs if self.encoder is not None else []):
            out[f"encoder.layers.{i}"] = conv
        for j, hidden in enumerate(self.head.hidden):
            out[f"head.layers.{j}"] = hidden
        return out

    def _remove_gates(self, names: list[str]) -> None:
        """Build the layers ``names`` without a gate (compaction folded it: every unit on)."""
        layers = self.gated_layers()
        for name in names:
            if name not in layers:
                raise ConfigError(
                    f"policy.ungated: unknown layer {name!r}; layers: {', '.join(layers)}"
                )
            layer = layers[name]
            layer.gate = None
            if isinstance(layer, GatedConv2d):
                layer.gate_fc, layer.gated = None, False
            else:
                layer.gate_down = layer.gate_up = None
                layer.rank = 0

    def last_gates(self) -> dict[str, Tensor | None]:
        """Hard gates ``[B, N]`` of each gated layer in the last forward (None: ungated)."""
        return {
            k: (m.gate.last_gates if m.gate is not None else None)
            for k, m in self.gated_layers().items()
        }

    def gates(self) -> dict[str, SwanGate]:
        return {k: m.gate for k, m in self.gated_layers().items() if m.gate is not None}

    def set_normalization(
        self,
        proprio_mean: np.ndarray | Tensor,
        proprio_std: np.ndarray | Tensor,
        action_low: np.ndarray | Tensor,
        action_high: np.ndarray | Tensor,
    ) -> None:
        """Store proprio statistics and action bounds (saved with the weights)."""
        with torch.no_grad():
            self.proprio_mean.copy_(torch.as_tensor(proprio_mean, dtype=torch.float32))
            self.proprio_std.copy_(
                torch.as_tensor(proprio_std, dtype=torch.float32).clamp(min=1e-6)
            )
            low = torch.as_tensor(action_low, dtype=torch.float32)
            high = torch.as_tensor(action_high, dtype=torch.float32)
            if not (
                torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()
            ):
                raise ValueError(f"action bounds must be finite with high > low, got {low}, {high}")
            self.action_low.copy_(low)
            self.action_high.copy_(high)

    # ------------------------------------------------------------------ forward
    def forward_normalized(
        self, obs: Mapping[str, Tensor], budget: float = 1.0, mode: Mode | None = None
    ) -> Tensor:
        """Actions in ``[-1, 1]`` (before unscaling): what the BC loss compares."""
        self._check_batch(obs)
        mode = mode or self.mode
        proprio = obs[PROPRIO].to(torch.float32)
        p = self.proprio((proprio - self.proprio_mean) / self.proprio_std)
        enc = self.encoder
        if mode == "masked":
            x = torch.cat([enc(obs[PIXELS], budget)[0], p], dim=1) if enc is not None else p
            pre, _ = self.head(x, budget)
        elif mode == "sparse":
            a = Active(p, None)
            if enc is not None:
                f = enc.forward_sparse(obs[PIXELS], budget)
                idx = None
                if f.idx is not None:
                    idx = torch.cat([f.idx, enc.out_dim + torch.arange(p.shape[1])])
                a = Active(torch.cat([f.x, p], 1), idx)
            pre = self.head.forward_sparse(a, budget)
        else:
            raise ValueError(f"mode must be 'masked' or 'sparse', got {mode!r}")
        self._last_batch = proprio.shape[0]
        if self.track_stats and not self.training:  # statistics describe inference only
            with torch.no_grad():
                for k, v in self.executed_macs().items():
                    self._macs_sum[k] = self._macs_sum.get(k, 0.0) + float(v.sum())
                self._macs_samples += proprio.shape[0]
        return torch.tanh(pre)

    def forward(
        self, obs: Mapping[str, Tensor], budget: float = 1.0, mode: Mode | None = None
    ) -> Tensor:
        """Batched actions ``[B, A]`` in the env's units.

        Args:
            obs: ``{"pixels": [B,H,W,C] uint8, "proprio": [B,P] float}``.
            budget: fraction of units each gated layer may use, in ``(0, 1]``.
            mode: ``"masked"`` (compute all, multiply by gates) or ``"sparse"``
                (compute only active units); default ``self.mode``.
        """
        a = self.forward_normalized(obs, budget, mode)
        return self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)

    def normalize_actions(self, actions: Tensor) -> Tensor:
        """Env-unit actions -> ``[-1, 1]`` (clipped), the inverse of the unscaling."""
        a = 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0
        return a.clamp(-1.0, 1.0)

    def _check_batch(self, obs: Mapping[str, Tensor]) -> None:
        spec = self.obs_spec.entries
        if set(obs) != set(spec):
            raise ObservationError(f"observation keys: expected {sorted(spec)}, got {sorted(obs)}")
        for key, s in spec.items():
            t = obs[key]
            if tuple(t.shape[1:]) != s.shape:
                raise ObservationError(
                    f"observation[{key!r}]: expected shape (B, {', '.join(map(str, s.shape))}), "
                    f"got {tuple(t.shape)}"
                )
        if PIXELS in obs and obs[PIXELS].dtype != torch.uint8:
            raise ObservationError(
                f"observation['pixels']: expected dtype uint8, got {obs[PIXELS].dtype}"
            )

    # ------------------------------------------------------------------ training
    def loss(
        self, batch: Mapping[str, Any], budget: float = 1.0
    ) -> tuple[Tensor, dict[str, float]]:
        """Behaviour-cloning loss: MSE in normalised action space + sparsity term.

        Args:
            batch: ``{"obs": {...}, "actions": [B, A]}`` (actions in env units).
            budget: the budget of this forward pass.

        Returns:
            ``(loss, info)`` with info keys ``bc_loss``, ``sparsity``, ``active_fraction``.
        """
        pred = self.forward_normalized(batch["obs"], budget, mode="masked")
        target = self.normalize_actions(batch["actions"].to(torch.float32))
        bc = F.mse_loss(pred, target)
        reg = self.sparsity_loss()
        loss = bc + self.config.gate.sparsity_weight * reg
        info = {
            "loss": float(loss.detach()),
            "bc_loss": float(bc.detach()),
            "sparsity": float(reg.detach()),
            "active_fraction": self.last_active_fraction(),
        }
        return loss, info

    def sparsity_loss(self) -> Tensor:
        """The gates' regularisers from the last differentiable forward, unit-weighted.

        Each layer's term is weighted by its share of all gated units, so every unit
        feels the same pressure whatever its layer's width (a plain mean over layers
        pushed a 32-channel conv's units 8x harder than a 256-unit layer's and
        collapsed the encoder; docs/results.md, issue 4).
        """
        pairs = [
            (r, g.num_units) for g in self.gates().values() if (r := g.regulariser()) is not None
        ]
        if not pairs:
            return torch.zeros(())
        total = sum(n for _, n in pairs)
        return torch.stack([r * (n / total) for r, n in pairs]).sum()

    def last_active_fraction(self) -> float:
        """Unit-weighted active fraction over all gated layers in the last forward."""
        active = total = 0.0
        for g in self.last_gates().values():
            if g is not None:
                active += float(g.sum())
                total += g.numel()
        return active / total if total else 1.0

    # ------------------------------------------------------------------ acting
    @torch.inference_mode()
    def act(self, obs: Mapping[str, Any], budget: float = 1.0) -> np.ndarray:
        """One control step: validated numpy observation in, float32 action ``[A]`` out.

        Runs the sparse mode (only the active units are computed). In eval mode each call
        also updates the gate and MAC statistics; set ``policy.track_stats = False`` (and
        ``gate.track_stats`` on ``policy.gates()``) in latency-critical loops.

        Raises:
            ObservationError: a key is missing/extra, or has the wrong shape, dtype or
                non-finite values (the message names the key).
        """
        arrays = self.obs_spec.validate(obs)
        device = self.action_low.device
        batch = {k: torch.from_numpy(v).unsqueeze(0).to(device) for k, v in arrays.items()}
        # sparse mode: same actions as masked (tests: atol 1e-5), only active units computed
        action = self.forward(batch, budget, mode="sparse")[0].cpu().numpy()
        if not np.isfinite(action).all():
            raise FloatingPointError("policy produced a non-finite action (weights contain NaN?)")
        return action

    # ------------------------------------------------------------------ statistics
    def executed_macs(self) -> dict[str, Tensor]:
        """Per-layer MACs per sample of the last forward (gate networks included)."""
        if not self._last_batch:
            raise RuntimeError("executed_macs() needs a forward pass first")
        enc, batch = self.encoder, self._last_batch
        gates = list(self.last_gates().values())
        n_enc = len(enc.convs) if enc is not None else 0
        out: dict[str, Tensor] = {}
        n_feat = torch.zeros(batch)
        if enc is not None:
            out = enc.executed_macs(gates[:n_enc], batch)
            last = gates[n_enc - 1]
            n_feat = (
                2 * last.sum(1) if last is not None else torch.full((batch,), float(enc.out_dim))
            )
        out["proprio"] = self.proprio.macs(batch)
        out.update(self.head.executed_macs(n_feat + self.proprio.out_dim, gates[n_enc:], batch))
        return out

    def dense_macs(self) -> int:
        """MACs per sample of the same architecture without gates (all units on)."""
        total = 0
        if self.encoder is not None and self.image_channels is not None:
            n_in = self.image_channels
            for layer in self.encoder.convs:
                k = layer.conv.kernel_size
                total += flops.conv2d_macs(n_in, layer.num_units, (k[0], k[1]), layer.out_hw)
                n_in = layer.num_units
            total += flops.spatial_softmax_macs(n_in, self.encoder.pool.hw)
        if self.proprio.linear is not None:
            total += flops.linear_macs(self.proprio_dim, self.proprio.out_dim)
        d = self.head.in_dim
        for hidden in self.head.hidden:
            total += flops.linear_macs(d, hidden.num_units)
            d = hidden.num_units
        return total + flops.linear_macs(d, self.action_dim)

    def gate_stats(self) -> dict[str, Any]:
        """Activation statistics accumulated since the last reset.

        Returns:
            ``{"layers": {name: {"units", "active_fraction", "frequency"}},
            "macs_per_step": {name: mean MACs}, "samples": n}``.
        """
        layers = {}
        for name, gate in self.gates().items():
            freq = gate.activation_frequency()
            layers[name] = {
                "units": gate.num_units,
                "active_fraction": float(freq.mean()),
                "frequency": freq.tolist(),
            }
        n = max(self._macs_samples, 1)
        return {
            "layers": layers,
            "macs_per_step": {k: v / n for k, v in self._macs_sum.items()},
            "samples": self._macs_samples,
        }

    def reset_gate_stats(self) -> None:
        for gate in self.gates().values():
            gate.reset_stats()
        self._macs_sum.clear()
        self._macs_samples = 0

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (atomic, no pickle)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(
            directory / WEIGHTS_NAME,
            self.state_dict(),
            metadata={"format": "pt", "swan_policy_version": __version__},
        )
        save_json(
            directory / CONFIG_NAME,
            {"swan_policy_version": __version__, "policy": self.config.model_dump(mode="json")},
        )
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> SwanPolicy:
        """Load a policy saved by :meth:`save_pretrained`.

        Raises:
            CheckpointError: the directory, config or weights are missing, malformed
                (including a pickle under a safetensors name), or do not fit.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(
                f"{directory}: expected a policy directory with {WEIGHTS_NAME} and {CONFIG_NAME}"
            )
        meta = load_json(directory / CONFIG_NAME)
        if not isinstance(meta, dict) or "policy" not in meta:
            raise CheckpointError(f"{directory / CONFIG_NAME}: missing the 'policy' section")
        try:
            config = validate_config(meta["policy"], PolicyConfig)
        except ConfigError as e:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from None
        state = load_tensors(directory / WEIGHTS_NAME)
        with torch.random.fork_rng(devices=[]):  # the init's draws are overwritten below:
            try:  # keep them out of the caller's RNG stream
                policy = cls(config)
            except (KeyError, ValueError) as e:  # a config that validates but cannot build
                raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from None
        check_state_dict(policy.state_dict(), state, directory / WEIGHTS_NAME)
        policy.load_state_dict(state, strict=True)
        return policy.to(device)
