"""RL checkpoints: an SB3 model's full training state as safetensors + JSON (no pickle).

``checkpoints/step_<n>/`` holds what :func:`~swan_policy.train.checkpoint.save_checkpoint`
writes for every run (the SwanPolicy, RNG streams, trainer_state.json) and, for RL:

    sb3_state.safetensors       SB3 policy (actor + critics) + optimisers (+ SAC's log_ent_coef)
    vecnormalize.json           VecNormalize statistics (if rl.normalize)
    replay_buffer.safetensors   SAC's replay buffer (rl.save_replay_buffer), newest checkpoint only

The replay buffer is by far the largest file (a pixel buffer holds every frame twice),
so only the newest checkpoint keeps one: writing a checkpoint removes the buffers of the
older ones. Resuming from an older checkpoint starts SAC with an empty buffer, and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

from swan_policy.serialization import (
    CheckpointError,
    check_state_dict,
    load_json,
    load_tensors,
    save_json,
    save_tensors,
)
from swan_policy.train.checkpoint import (
    TrainerState,
    _flatten_optimizer,
    _unflatten_optimizer,
    load_checkpoint,
    save_checkpoint,
)
from swan_policy.train.rl import extract_swan_policy
from swan_policy.train.runtime import TrainingError

SB3_STATE = "sb3_state.safetensors"
VECNORM = "vecnormalize.json"
REPLAY = "replay_buffer.safetensors"

log = logging.getLogger(__name__)


def _optimizers(model: BaseAlgorithm) -> dict[str, torch.optim.Optimizer]:
    if isinstance(model, SAC):
        opts = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
        if model.ent_coef_optimizer is not None:
            opts["ent_coef"] = model.ent_coef_optimizer
        return opts
    return {"policy": model.policy.optimizer}


# ----------------------------------------------------------------------------- VecNormalize
def _rms_json(rms: RunningMeanStd) -> dict[str, Any]:
    return {"mean": rms.mean.tolist(), "var": rms.var.tolist(), "count": float(rms.count)}


def _rms_load(rms: RunningMeanStd, data: dict[str, Any]) -> None:
    rms.mean = np.asarray(data["mean"], dtype=np.float64).reshape(rms.mean.shape)
    rms.var = np.asarray(data["var"], dtype=np.float64).reshape(rms.var.shape)
    rms.count = float(data["count"])


def vecnormalize_state(vn: VecNormalize) -> dict[str, Any]:
    """VecNormalize's statistics and settings as JSON-ready data (no pickle)."""
    obs = vn.obs_rms
    return {
        "norm_obs": vn.norm_obs,
        "norm_reward": vn.norm_reward,
        "norm_obs_keys": vn.norm_obs_keys,
        "clip_obs": vn.clip_obs,
        "clip_reward": vn.clip_reward,
        "gamma": vn.gamma,
        "epsilon": vn.epsilon,
        "obs_rms": (
            {k: _rms_json(v) for k, v in obs.items()} if isinstance(obs, dict) else _rms_json(obs)
        ),
        "ret_rms": _rms_json(vn.ret_rms),
    }


def load_vecnormalize_state(vn: VecNormalize, data: dict[str, Any]) -> None:
    """Restore statistics written by :func:`vecnormalize_state` (shapes must agree)."""
    try:
        obs = vn.obs_rms
        if isinstance(obs, dict):
            for k, rms in obs.items():
                _rms_load(rms, data["obs_rms"][k])
        else:
            _rms_load(obs, data["obs_rms"])
        _rms_load(vn.ret_rms, data["ret_rms"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{VECNORM}: statistics do not fit this env ({e!r})") from None


# ----------------------------------------------------------------------------- checkpoints
def _replay_arrays(buffer: ReplayBuffer) -> dict[str, np.ndarray]:
    n = buffer.buffer_size if buffer.full else buffer.pos
    # optimize_memory_usage: no next_observations; the next observation of transition i
    # is observations[i + 1], so the slot at pos (the last one's) is saved as well
    compact = getattr(buffer, "optimize_memory_usage", False) and not buffer.full
    n_obs = min(n + 1, buffer.buffer_size) if compact else n
    out: dict[str, np.ndarray] = {}
    for name in ("observations", "next_observations"):
        value = getattr(buffer, name, None)
        if isinstance(value, dict):
            out.update({f"{name}.{k}": v[:n] for k, v in value.items()})
        elif value is not None:
            out[name] = value[: n_obs if name == "observations" else n]
    for name in ("actions", "rewards", "dones", "timeouts"):
        out[name] = getattr(buffer, name)[:n]
    return out


def _restore_replay(buffer: ReplayBuffer, path: Path, pos: int, full: bool) -> None:
    tensors = load_tensors(path)
    for key, value in tensors.items():
        name, _, sub = key.partition(".")
        target = getattr(buffer, name, None)
        if isinstance(target, dict):
            target = target.get(sub)
        if target is None or value.shape[1:] != target.shape[1:] or len(value) > len(target):
            raise CheckpointError(f"{path}: {key} does not fit the replay buffer")
        target[: len(value)] = value.numpy()
    buffer.pos, buffer.full = pos, full


def save_rl_checkpoint(
    run_dir: Path,
    model: BaseAlgorithm,
    step: int,
    best: float | None,
    save_replay: bool,
    vecnorm: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``checkpoints/step_<step>`` (see the module docstring).

    ``vecnorm``: VecNormalize statistics to save instead of the live ones (Ctrl-C: those
    taken when the last complete rollout ended, not counting the dropped partial one).
    """
    policy = extract_swan_policy(model)
    if not all(torch.isfinite(p).all() for p in model.policy.parameters()):
        raise TrainingError(f"non-finite parameters at step {step}")
    tensors: dict[str, torch.Tensor] = {
        f"policy.{k}": v for k, v in model.policy.state_dict().items()
    }
    opt_meta: dict[str, Any] = {}
    for name, opt in _optimizers(model).items():
        flat, meta = _flatten_optimizer(opt)
        tensors.update({f"opt.{name}.{k}": v for k, v in flat.items()})
        opt_meta[name] = meta
    if isinstance(model, SAC) and model.ent_coef_optimizer is not None:
        assert model.log_ent_coef is not None
        tensors["log_ent_coef"] = model.log_ent_coef.detach()
    buffer = getattr(model, "replay_buffer", None)
    replay = save_replay and isinstance(buffer, ReplayBuffer)
    state = TrainerState(step=step, best_metric=best)
    state.extras = {
        "algo": type(model).__name__.lower(),
        "num_timesteps": step,
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_num": int(getattr(model, "_episode_num", 0)),
        "optimizers": opt_meta,
        "replay": (
            {"pos": int(buffer.pos), "full": bool(buffer.full)}
            if replay and isinstance(buffer, ReplayBuffer)
            else None
        ),
        # SAC's warm-up actions (before learning_starts) come from this sampler
        "action_space_rng": model.action_space.np_random.bit_generator.state,
    }
    vn = model.get_vec_normalize_env()

    def write_extra(tmp: Path) -> None:
        save_tensors(tmp / SB3_STATE, tensors)
        if vn is not None:
            save_json(tmp / VECNORM, vecnorm if vecnorm is not None else vecnormalize_state(vn))
        if replay and isinstance(buffer, ReplayBuffer):
            arrays = _replay_arrays(buffer)
            save_tensors(tmp / REPLAY, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()})

    final = save_checkpoint(run_dir, policy, None, state, extra=write_extra)
    if replay:
        _drop_older_replays(final)
    return final


def _drop_older_replays(newest: Path) -> None:
    """Remove the replay buffers of every checkpoint but ``newest`` (``last`` now points
    to it, and ``--resume`` starts from ``last``): one buffer on disk, not one per save."""
    for ckpt in newest.parent.glob("step_*"):
        if ckpt != newest and (ckpt / REPLAY).is_file():
            (ckpt / REPLAY).unlink()


def restore_rl_checkpoint(model: BaseAlgorithm, ckpt: Path) -> TrainerState:
    """Load a checkpoint written by :func:`save_rl_checkpoint` into a freshly built model.

    Raises:
        CheckpointError: a file is missing, malformed, or does not fit the model.
    """
    loaded = load_checkpoint(ckpt)
    state = loaded.state
    extras = state.extras
    tensors = load_tensors(ckpt / SB3_STATE)
    policy_sd = {k[7:]: v for k, v in tensors.items() if k.startswith("policy.")}
    check_state_dict(model.policy.state_dict(), policy_sd, ckpt / SB3_STATE)
    model.policy.load_state_dict(policy_sd, strict=True)
    try:
        for name, opt in _optimizers(model).items():
            prefix = f"opt.{name}."
            flat = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            opt.load_state_dict(_unflatten_optimizer(flat, extras["optimizers"][name]))
        if isinstance(model, SAC) and model.ent_coef_optimizer is not None:
            assert model.log_ent_coef is not None
            with torch.no_grad():
                model.log_ent_coef.copy_(tensors["log_ent_coef"])
        if (sampler := extras.get("action_space_rng")) is not None:  # older checkpoints: none
            model.action_space.np_random.bit_generator.state = sampler
        model.num_timesteps = int(extras["num_timesteps"])
        model._n_updates = int(extras["n_updates"])
        model._episode_num = int(extras["episode_num"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt}: RL state does not fit this model ({e!r})") from None
    vn = model.get_vec_normalize_env()
    if vn is not None:
        if not (ckpt / VECNORM).is_file():
            raise CheckpointError(f"{ckpt}: {VECNORM} is missing but rl.normalize is on")
        load_vecnormalize_state(vn, load_json(ckpt / VECNORM))
    replay = extras.get("replay")
    buffer = getattr(model, "replay_buffer", None)
    if replay and isinstance(buffer, ReplayBuffer):
        if (ckpt / REPLAY).is_file():
            _restore_replay(buffer, ckpt / REPLAY, int(replay["pos"]), bool(replay["full"]))
        else:
            log.warning(
                "%s: no %s (only the newest checkpoint keeps SAC's replay buffer); "
                "resuming with an empty buffer",
                ckpt,
                REPLAY,
            )
    loaded.restore_rng()
    return state
