"""A checkpoint cloned into another run (PBT) trains on with that run's optimizer settings, not the saved ones."""

from types import SimpleNamespace

import pytest
import torch

from hone.training.checkpoints import apply_optim_settings
from hone.training.config import OptimConfig
from hone.training.losses import lr_multiplier


def _engine(lr: float, weight_decay: float, cfg):  # type: ignore[no-untyped-def]
    # The same optimizer and schedule shape DeepSpeed holds for hone: AdamW + LambdaLR over the run's steps.
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    o = cfg.optim
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, o.warmup_steps, 20, o.decay, o.min_lr_ratio)
    )
    return SimpleNamespace(module=model, optimizer=optimizer, lr_scheduler=schedule)


def test_cloned_optimizer_takes_this_runs_lr_and_weight_decay_at_the_restored_step():
    donor_cfg = SimpleNamespace(optim=OptimConfig(lr=3e-3, warmup_steps=2))
    donor = _engine(3e-3, 0.0, donor_cfg)
    for _ in range(6):  # six optimizer steps, so moments and the schedule position are non-trivial
        donor.module(torch.randn(3, 4)).sum().backward()
        donor.optimizer.step()
        donor.optimizer.zero_grad()
        donor.lr_scheduler.step()

    cfg = SimpleNamespace(optim=OptimConfig(lr=5e-4, warmup_steps=2, weight_decay=0.1, betas=[0.8, 0.95]))
    clone = _engine(5e-4, 0.1, cfg)
    clone.optimizer.load_state_dict(donor.optimizer.state_dict())
    clone.lr_scheduler.load_state_dict(donor.lr_scheduler.state_dict())
    assert clone.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * lr_multiplier(6, 2, 20, "cosine", 0.0))  # the donor's

    apply_optim_settings(clone, cfg)
    expected = 5e-4 * lr_multiplier(6, 2, 20, "cosine", 0.0)
    group = clone.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(expected) and group["weight_decay"] == 0.1 and group["betas"] == (0.8, 0.95)
    assert clone.optimizer.state_dict()["state"][0]["step"] == 6  # Adam's moments and step count are kept
    clone.lr_scheduler.step()  # and the schedule goes on from step 6 with this run's base LR
    assert group["lr"] == pytest.approx(5e-4 * lr_multiplier(7, 2, 20, "cosine", 0.0))
