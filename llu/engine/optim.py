"""Optimisers and learning-rate schedules with Dassl's config keys.

The warm-up is a closed-form per-epoch factor on ``LambdaLR`` instead of Dassl's wrapper
scheduler (which passes ``verbose`` to ``LRScheduler`` and fails on torch 2.x). The sequence of
learning rates is Dassl's: ``WARMUP_EPOCH`` epochs at the warm-up rate, then the main schedule
counted from 0 (``WARMUP_RECOUNT``).
"""
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from llu.utils import UserError

AVAI_OPTIMS = ("sgd", "adam", "adamw")
AVAI_SCHEDS = ("cosine", "single_step", "multi_step")


def build_optimizer(model_or_params, optim_cfg, param_groups=None):
    name = optim_cfg.NAME
    if name not in AVAI_OPTIMS:
        raise UserError(f"OPTIM.NAME must be one of {', '.join(AVAI_OPTIMS)}, got {name!r}")
    if param_groups is not None:
        params = param_groups
    elif isinstance(model_or_params, torch.nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = model_or_params
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    if name == "sgd":
        settings = dict(lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd, dampening=optim_cfg.SGD_DAMPNING,
                        nesterov=optim_cfg.SGD_NESTEROV)
        params = list(params)
        try:  # one kernel per step instead of a pass per operation; the same numbers, bit for bit
            return torch.optim.SGD(params, fused=True, **settings)
        except (RuntimeError, TypeError, ValueError):  # a torch or device without the fused kernel
            return torch.optim.SGD(params, **settings)
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)


def _main_schedule_factor(optim_cfg, epoch):
    """Factor on the base learning rate at ``epoch`` of the main (post-warm-up) schedule."""
    name = optim_cfg.LR_SCHEDULER
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / float(optim_cfg.MAX_EPOCH)))
    stepsize = optim_cfg.STEPSIZE
    if name == "single_step":
        step = stepsize[-1] if isinstance(stepsize, (list, tuple)) else stepsize
        if step <= 0:
            step = optim_cfg.MAX_EPOCH
        return optim_cfg.GAMMA ** (epoch // step)
    return optim_cfg.GAMMA ** sum(1 for m in stepsize if epoch >= m)


def learning_rate_at(optim_cfg, base_lr, epoch):
    """The learning rate Dassl's scheduler would use during ``epoch`` (0-based)."""
    warmup = optim_cfg.WARMUP_EPOCH
    if warmup > 0 and epoch < warmup:
        if optim_cfg.WARMUP_TYPE == "constant":
            return optim_cfg.WARMUP_CONS_LR
        if epoch == 0:
            return optim_cfg.WARMUP_MIN_LR
        return base_lr * epoch / warmup
    main_epoch = epoch - warmup if (warmup > 0 and optim_cfg.WARMUP_RECOUNT) else epoch
    return base_lr * _main_schedule_factor(optim_cfg, main_epoch)


def build_lr_scheduler(optimizer, optim_cfg):
    if optim_cfg.LR_SCHEDULER not in AVAI_SCHEDS:
        raise UserError(f"OPTIM.LR_SCHEDULER must be one of {', '.join(AVAI_SCHEDS)}, "
                        f"got {optim_cfg.LR_SCHEDULER!r}")
    if optim_cfg.WARMUP_EPOCH > 0 and optim_cfg.WARMUP_TYPE not in ("constant", "linear"):
        raise UserError(f"OPTIM.WARMUP_TYPE must be constant or linear, got {optim_cfg.WARMUP_TYPE!r}")

    def factor_fn(base_lr):
        if base_lr == 0:
            return lambda epoch: 0.0
        return lambda epoch: learning_rate_at(optim_cfg, base_lr, epoch) / base_lr

    return LambdaLR(optimizer, [factor_fn(group["lr"]) for group in optimizer.param_groups])
