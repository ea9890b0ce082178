"""Does ``bc.compile`` train the same policy? Compiled vs eager sandwich loss and gradients.

Builds the config's policy at its real size (image, widths and proprio from the env),
then, for a few random batches, computes the BC sandwich loss and its gradients once in
eager mode and once through ``CompiledForward`` (the training step's ``torch.compile``
path, Inductor by default), and reports the largest relative gradient difference per
parameter tensor. Float32 summation order differs between the two, so the differences
are not zero; a wrong compiled kernel would show as differences far above 1e-4.

    python scripts/check_compiled_grads.py --config configs/reach_bc.yaml --batches 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from swan_policy.config import load_config
from swan_policy.envs import make_env, resolve_policy_config
from swan_policy.policy import SwanPolicy
from swan_policy.train.losses import CompiledForward, bc_sandwich_loss


def random_batch(
    policy: SwanPolicy, batch: int, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    cfg = policy.config
    gen = torch.Generator().manual_seed(seed)
    obs = {"proprio": torch.randn(batch, cfg.proprio_dim or 0, generator=gen)}
    if cfg.image_hw is not None and cfg.image_channels is not None:
        shape = (batch, *cfg.image_hw, cfg.image_channels)
        obs["pixels"] = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    actions = torch.rand(batch, cfg.action_dim or 0, generator=gen) * 2 - 1
    return obs, actions


def loss_and_grads(
    policy: SwanPolicy,
    batch: tuple[dict[str, torch.Tensor], torch.Tensor],
    budgets: list[float],
    distill_weight: float,
    forward: CompiledForward | None,
) -> tuple[float, dict[str, torch.Tensor]]:
    policy.zero_grad()
    obs, actions = batch
    loss, _ = bc_sandwich_loss(policy, obs, actions, budgets, 0.0, distill_weight, forward=forward)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in policy.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.25, 0.5])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend.")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows.")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    env = make_env(cfg.env)
    policy_cfg = resolve_policy_config(cfg.policy, env)
    env.close()
    torch.manual_seed(cfg.seed)
    policy = SwanPolicy(policy_cfg)
    compiled = CompiledForward(policy, backend=args.backend)
    rows = []
    for i in range(args.batches):
        batch = random_batch(policy, args.batch, seed=i)
        eager_loss, eager = loss_and_grads(policy, batch, args.budgets, cfg.bc.distill_weight, None)
        comp_loss, comp = loss_and_grads(
            policy, batch, args.budgets, cfg.bc.distill_weight, compiled
        )
        if compiled.compiled is None:
            raise SystemExit("error: compiling failed; the run would train in eager mode")
        if set(eager) != set(comp):
            raise SystemExit(
                f"error: gradients differ in which parameters get one: {set(eager) ^ set(comp)}"
            )
        rel = {n: float((eager[n] - comp[n]).norm() / (eager[n].norm() + 1e-12)) for n in eager}
        worst = max(rel, key=rel.__getitem__)
        rows.append(
            {
                "batch": i,
                "loss_eager": eager_loss,
                "loss_compiled": comp_loss,
                "max_rel_grad_diff": rel[worst],
                "worst_param": worst,
            }
        )
        print(
            f"batch {i}: loss eager {eager_loss:.7f} compiled {comp_loss:.7f}  "
            f"max relative gradient difference {rel[worst]:.1e} ({worst})",
            flush=True,
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"backend": args.backend, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
