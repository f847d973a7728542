"""Latent-model training step: frames per second of one optimizer step, per model, on one thread.

Run ``python benchmarks/latent_step.py`` (``--rounds``, ``--steps``, ``--batch``, ``--dim``, ``--hidden``).

The Lennard-Jones paper job's latent training (d = 32, hidden [256, 256, 256], ReLU^2, batch 512) is the
longest training of the paper's protocol. Each variant takes the same step: g = model(z) on a fixed batch of
normalised latent states, the L_x,p loss on random least-squares triples (R, y) of the encoded store's form,
backward through g (and with it through grad V for the OnsagerNets), one AdamW(amsgrad) step. Variants:

* ``onsagernet``: hpcsur's OnsagerNet (separate potential and matrix networks, autograd's grad V, so the
  backward is a double backward) -- the baseline the issue measured at ~9,900 frames/s;
* ``onsagernet_ref``: the reference's Predator-Prey OnsagerNet (wider matrix network, autograd's grad V);
* ``onsagernet_shared``: the reference's Lennard-Jones / Allen-Cahn OnsagerNet, one trunk for the potential,
  the matrices and the forcing, grad V by an explicit backward sweep (one backward pass);
* ``onsagernet_shared_autograd`` (a control): the same model and parameters with grad V from autograd, so the
  difference to ``onsagernet_shared`` is the explicit sweep alone, and to ``onsagernet`` the architecture.

Variants run interleaved round by round (``hpcsur.measure.interleave``), each round ``--steps`` steps after a
warm-up; the ratios compare medians measured in this run. Prints ONE JSON object as the last stdout line.
"""
from __future__ import annotations

import argparse

import torch

from hpcsur.learn.latent import LatentDynamics, LatentShape, input_gradient
from hpcsur.learn.losses import batch_loss
from hpcsur.measure import emit, interleave

VARIANTS = ("onsagernet", "onsagernet_ref", "onsagernet_shared", "onsagernet_shared_autograd")


def autograd_forward(net):
    """``net``'s forward with grad V from autograd instead of the explicit sweep (the control)."""
    from hpcsur.learn.latent import ALPHA

    def forward(z):
        _, grad_v = input_gradient(net.potential, z)
        m, w = net.operators(z)
        return -((m + w) @ grad_v.unsqueeze(-1)).squeeze(-1) - ALPHA * grad_v + net.forcing_head(net._trunk(z)[0])
    return forward


def make_step(variant: str, d: int, hidden: list[int], batch: int, k: int, seed: int = 0):
    torch.manual_seed(seed)
    model_name = "onsagernet_shared" if variant.startswith("onsagernet_shared") else variant
    model = LatentDynamics(LatentShape(model_name, d, tuple(hidden), "relu2"))
    if variant == "onsagernet_shared_autograd":
        model.net.forward = autograd_forward(model.net)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True, weight_decay=0.0)
    data = {"z": torch.randn(batch, d), "lxp_R": torch.randn(batch, k, d) / k ** 0.5,
            "lxp_y": torch.randn(batch, k), "lxp_r2": torch.rand(batch)}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss("lxp", model(data["z"]), data, 1.0 / 16)
        loss.backward()
        optimizer.step()
    return step


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps = {v: make_step(v, args.dim, args.hidden, args.batch, args.dim) for v in VARIANTS}
    for fn in steps.values():          # warm-up: allocator, kernels
        for _ in range(3):
            fn()

    def run(fn):
        return lambda: [fn() for _ in range(args.steps)]
    runs = interleave({v: run(fn) for v, fn in steps.items()}, args.rounds)
    per_step = {v: r.median / args.steps for v, r in runs.items()}
    frames = {v: args.batch / s for v, s in per_step.items()}
    return emit({
        "benchmark": "latent_step", "batch": args.batch, "latent_dim": args.dim, "hidden": args.hidden,
        "threads": 1, "rounds": args.rounds, "steps_per_round": args.steps,
        "s_per_step": per_step, "frames_per_s": frames,
        "spread": {v: r.spread for v, r in runs.items()},
        "speedup_vs_onsagernet": {v: frames[v] / frames["onsagernet"] for v in VARIANTS},
        "explicit_sweep_vs_autograd": frames["onsagernet_shared"] / frames["onsagernet_shared_autograd"],
    })


if __name__ == "__main__":
    main()
