"""Environment helpers: make envs from configs, resolve and check spaces.

swan_policy works with any gymnasium env whose observations are the dict
``{"pixels": HxWxC uint8, "proprio": float}`` (or ``{"proprio": float}`` for
state-observation policies) and whose actions are a ``Box``. :func:`make_env` wraps an
env with a flat ``Box`` observation (``InvertedPendulum-v5``) as ``{"proprio": obs}``.
The swan_envs tasks are registered on first use; mujoco is never imported here.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from swan_policy.config import EnvConfig, PolicyConfig
from swan_policy.spec import PIXELS, PROPRIO


class SpaceMismatchError(ValueError):
    """A policy and an environment disagree on observation or action spaces."""


def ensure_registered(env_id: str) -> None:
    """Import the package that registers ``env_id`` (``swan_envs/...`` ids)."""
    namespace = env_id.split("/", 1)[0] if "/" in env_id else None
    if namespace and env_id not in gym.registry:
        try:
            importlib.import_module(namespace)
        except ImportError:
            pass  # gym.make gives the standard "not found" error


class StateAsProprio(gym.ObservationWrapper[dict[str, Any], Any, np.ndarray]):
    """A flat ``Box`` observation as ``{"proprio": float32 vector}``."""

    def __init__(self, env: gym.Env[np.ndarray, Any]) -> None:
        super().__init__(env)
        box = env.observation_space
        assert isinstance(box, spaces.Box)
        self.observation_space = spaces.Dict(
            {
                PROPRIO: spaces.Box(
                    box.low.astype(np.float32), box.high.astype(np.float32), box.shape, np.float32
                )
            }
        )

    def observation(self, observation: np.ndarray) -> dict[str, Any]:
        return {PROPRIO: np.asarray(observation, dtype=np.float32)}

    def step(self, action: Any) -> tuple[dict[str, Any], Any, bool, bool, dict[str, Any]]:
        """Refuse a misshapen or non-finite action before the simulator sees it.

        gymnasium's own MuJoCo envs pass NaN straight to MuJoCo, which warns and
        silently resets its state (RELIABILITY.md row 11); the swan_envs tasks check
        their actions themselves.
        """
        check_action(action, self.action_space)
        return super().step(action)


def check_action(action: Any, space: spaces.Space[Any]) -> None:
    """Raise ``ValueError`` unless ``action`` is a finite numeric array of the Box's shape."""
    if not isinstance(space, spaces.Box):
        return
    try:
        arr = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"action must be a numeric array of shape {space.shape}, got {type(action).__name__}"
        ) from None
    if arr.shape != space.shape:
        raise ValueError(f"action must have shape {space.shape}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"action must be finite, got {arr.tolist()} (NaN or Inf)")


def effective_kwargs(env_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` as the env is built with them: the registration's kwargs underneath, and
    without the entries that equal the constructor's defaults or only choose a render
    mode, so that ``{}`` and ``{"variation": "none"}`` name the same env.

    (JSON round trip: tuples compare equal to the lists a file stores.)
    """
    import inspect
    import json

    from gymnasium.envs.registration import load_env_creator

    ensure_registered(env_id)
    merged = json.loads(json.dumps(kwargs, default=str))
    defaults: dict[str, Any] = {}
    try:
        spec = gym.spec(env_id)
        merged = {**json.loads(json.dumps(spec.kwargs, default=str)), **merged}
        if isinstance(spec.entry_point, str):
            creator = load_env_creator(spec.entry_point)
            defaults = {
                name: p.default
                for name, p in inspect.signature(creator).parameters.items()
                if p.default is not inspect.Parameter.empty
            }
    except (gym.error.Error, ValueError, TypeError, ImportError, AttributeError):
        pass  # unknown or not inspectable: compare the kwargs as given
    defaults = json.loads(json.dumps(defaults, default=str))
    return {
        k: v
        for k, v in merged.items()
        if k != "render_mode" and not (k in defaults and defaults[k] == v)
    }


def make_env(cfg: EnvConfig, render_mode: str | None = None, **overrides: Any) -> gym.Env[Any, Any]:
    """``gym.make`` for a config's env (flat ``Box`` observations become ``{"proprio"}``).

    Raises:
        ValueError: the config names no env, or gymnasium does not know the id.
    """
    if not cfg.id:
        raise ValueError("env.id is not set in the config")
    ensure_registered(cfg.id)
    kwargs = {**cfg.kwargs, **overrides}
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(cfg.id, **kwargs)
    except gym.error.Error as e:
        raise ValueError(f"env.id {cfg.id!r}: {e}") from None
    box = env.observation_space
    if isinstance(box, spaces.Box) and len(box.shape) == 1:
        return StateAsProprio(env)
    return env


def _dict_spaces(env: gym.Env[Any, Any]) -> tuple[spaces.Box | None, spaces.Box, spaces.Box]:
    """``(pixels or None, proprio, action)`` Box spaces of a swan-style env."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, spaces.Dict) or set(obs_space.spaces) not in (
        {PIXELS, PROPRIO},
        {PROPRIO},
    ):
        raise SpaceMismatchError(
            f"expected a Dict observation space with keys ['{PIXELS}', '{PROPRIO}'] "
            f"or ['{PROPRIO}'], got {obs_space}"
        )
    pixels, proprio = obs_space.spaces.get(PIXELS), obs_space.spaces[PROPRIO]
    if pixels is not None and (
        not isinstance(pixels, spaces.Box) or pixels.dtype != np.uint8 or len(pixels.shape) != 3
    ):
        raise SpaceMismatchError(f"observation '{PIXELS}' must be a HxWxC uint8 Box, got {pixels}")
    if not isinstance(proprio, spaces.Box) or len(proprio.shape) != 1:
        raise SpaceMismatchError(f"observation '{PROPRIO}' must be a 1-D Box, got {proprio}")
    if not isinstance(act_space, spaces.Box) or len(act_space.shape) != 1:
        raise SpaceMismatchError(f"action space must be a 1-D Box, got {act_space}")
    return pixels, proprio, act_space


def resolve_policy_config(cfg: PolicyConfig, env: gym.Env[Any, Any]) -> PolicyConfig:
    """Fill unset dims from the env's spaces; check the set ones (error names the field)."""
    pixels, proprio, act = _dict_spaces(env)
    env_id = env.spec.id if env.spec else type(env).__name__
    wanted: dict[str, Any] = {
        "proprio_dim": int(proprio.shape[0]),
        "action_dim": int(act.shape[0]),
    }
    if pixels is not None and cfg.pixels:
        wanted["image_hw"] = (int(pixels.shape[0]), int(pixels.shape[1]))
        wanted["image_channels"] = int(pixels.shape[2])
    elif pixels is None and cfg.pixels:
        raise SpaceMismatchError(
            f"env {env_id} has no '{PIXELS}' observation; set policy.pixels=false "
            "for a proprio-only policy"
        )
    return fill_policy_dims(cfg, wanted, f"env {env_id}")


def fill_policy_dims(cfg: PolicyConfig, wanted: dict[str, Any], source: str) -> PolicyConfig:
    """``cfg`` with its unset dims taken from ``wanted``; a set dim that differs raises
    :class:`SpaceMismatchError` naming the field and ``source`` (e.g. ``"env Reach-v0"``)."""
    update = {}
    for field, value in wanted.items():
        current = getattr(cfg, field)
        if current is None:
            update[field] = value
        elif (tuple(current) if isinstance(current, tuple | list) else current) != value:
            raise SpaceMismatchError(f"policy.{field} is {current} but {source} has {value}")
    return cfg.model_copy(update=update)


def check_spaces(policy: Any, env: gym.Env[Any, Any]) -> None:
    """Raise before the first step if a policy cannot act in ``env`` (RELIABILITY row 4)."""
    pixels, proprio, act = _dict_spaces(env)
    expected = policy.obs_spec.entries
    env_id = env.spec.id if env.spec else type(env).__name__
    if PIXELS in expected and pixels is None:
        raise SpaceMismatchError(f"policy expects '{PIXELS}' but env {env_id} has none")
    if PIXELS in expected and pixels is not None and tuple(pixels.shape) != expected[PIXELS].shape:
        raise SpaceMismatchError(
            f"observation '{PIXELS}': policy expects {expected[PIXELS].shape}, "
            f"env {env_id} gives {tuple(pixels.shape)}"
        )
    if tuple(proprio.shape) != expected[PROPRIO].shape:
        raise SpaceMismatchError(
            f"observation '{PROPRIO}': policy expects {expected[PROPRIO].shape}, "
            f"env {env_id} gives {tuple(proprio.shape)}"
        )
    if act.shape[0] != policy.action_dim:
        raise SpaceMismatchError(
            f"action: policy outputs {policy.action_dim} values, "
            f"env {env_id} expects {act.shape[0]}"
        )
