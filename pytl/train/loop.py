"""The engine: one loop that runs either stage, epoch by epoch.

It applies the stage's freezing policy and builds the optimizer, runs the steps the stage describes
(steps.py), keeps the epoch's record (means, what the policy unfroze, eval metrics, the stage's own
keys such as the validation loss), stops on a diverged loss or when the stage says so (early stopping),
and writes checkpoints, the way pytorch/ignite's engine runs a step function with its
handlers. Whatever happens, the policy's freezing is undone and the progress bar closed at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pytl._progress import progress_bar
from pytl.freezing import BatchNormPolicy, FreezingPolicy, param_groups, summary
from pytl.train import ddp
from pytl.train.checkpoint import restore, save_checkpoint
from pytl.train.evaluate import evaluate
from pytl.train.metrics import Sums, check_finite
from pytl.train.precision import Precision
from pytl.train.steps import Stage, objective
from pytl.train.threads import stage_threads

if TYPE_CHECKING:
    from pytl.train.settings import OptimizerLike
    from pytl.train.state import RunState


def run_stage(run: RunState, model: nn.Module, stage: Stage, ev: dict[str, Any],
              resume: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One stage, epoch by epoch: the policy's schedule, the steps, the epoch's record (means, eval
    metrics), the divergence stop and the checkpoint. ``stage`` supplies the batches and the loss, and may
    add to each record and stop early (``after_epoch``) and act once at the end (``finish``: fine-tuning
    restores its best epoch's weights). The records are appended to ``run.history`` and returned."""
    settings = run.settings
    policy = with_frozen_batchnorm(stage.policy)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    records: list[dict[str, Any]] = []
    epoch = 0
    threads = stage_threads(settings.num_threads, model, stage.rows_per_step)
    with run.rng(offset=stage.rng_offset, per_rank=True, threads=threads) as gen:
        ddp.check_checkpoint_everywhere(run)
        if resume is not None:  # policies such as L2SP snapshot the weights the stage started from
            model.load_state_dict(resume["stage_start_model"])
        start_state = None
        if settings.checkpoint is not None:
            start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar = None
        step_fn: nn.Module | None = None  # the step's forward: the model, or its DDP wrapper
        try:
            policy.apply(model)
            opt = make_optimizer(settings.optimizer, param_groups(model, stage.lr, policy, float(settings.weight_decay)))
            run.policy_summary[stage.name] = f"policy: {policy!r}\n{summary(model, opt)}"
            precision = Precision(run)
            if resume is not None:
                epoch, records = restore(run, stage.name, resume, model, policy, opt, gen)
                precision.load_state_dict(resume.get("scaler"))
            stage.begin(gen, resume, model, policy)
            bar = progress_bar(stage.epochs - epoch, f"{run.label}{stage.name}", settings.progress and run.rank == 0)
            for epoch in range(epoch, stage.epochs):
                if stage.stopped():  # early stopping ended the stage (a checkpoint written at the stop)
                    break
                unfrozen = policy.on_epoch_start(model, epoch, opt)
                if step_fn is None or unfrozen:
                    step_fn = ddp.step_module(run, model)
                model.train()
                sums = Sums()
                for x, y, n in stage.batches(epoch):
                    assert y is not None
                    with precision.autocast():
                        out = stage.loss(step_fn, x, y, n)
                        pen = policy.penalty(model)
                        loss = out.loss if pen is None else out.loss + pen
                    opt.zero_grad(set_to_none=True)
                    precision.backward(objective(run, loss, out, pen))
                    precision.step(opt)
                    stage.after_step()
                    sums.add(x.shape[0], loss=loss, ce=out.ce, penalty=pen, correct=(out.logits.argmax(1) == y).sum(),
                             **{stage.align_key: out.align})
                rec: dict[str, Any] = {"stage": stage.name, "epoch": epoch,
                                       **sums.means(run.device if run.world > 1 else None), **stage.record()}
                rec.setdefault(stage.align_key, None)  # "coral" too when the stage had no alignment term
                check_finite(rec, stage.advice)
                if unfrozen:
                    rec["unfrozen"] = unfrozen
                rec.update(evaluate(run, model, ev))
                stop = stage.after_epoch(epoch, model, rec)
                records.append(rec)
                bar.update(1, **{k: rec[k] for k in stage.bar_keys if rec.get(k) is not None})
                save_checkpoint(run, stage.name, epoch + 1, model, start_state, opt, gen, records,
                                scaler=precision.state_dict(), **stage.state_dict())
                if stop:
                    break
            stage.finish(model, records)
        except Exception as e:
            ddp.raise_if_collective(run, e, stage.name, epoch)
            raise
        finally:
            if bar is not None:
                bar.close()
            step_fn = None
            ddp.release(run)
            policy.release(model)
            for p, flag in flags:  # the policy holds for its stage only
                p.requires_grad_(flag)
    model.eval()
    run.history[stage.name].extend(records)
    return records


def make_optimizer(spec: OptimizerLike, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer named by ``spec`` ("adam", "adamw", "sgd" with momentum 0.9), or ``spec(groups)``."""
    if callable(spec):
        opt = spec(groups)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer callable must return a torch.optim.Optimizer, got {type(opt).__name__}")
        return opt
    if spec == "adam":
        return torch.optim.Adam(groups)
    if spec == "adamw":
        return torch.optim.AdamW(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def with_frozen_batchnorm(policy: FreezingPolicy | None) -> FreezingPolicy:
    """The stage's policy, plus ``BatchNormPolicy("frozen")`` when it says nothing about BatchNorm, so that
    frozen BatchNorm layers keep their running statistics."""
    bn = BatchNormPolicy("frozen")
    if policy is None:
        return bn
    if any(isinstance(p, BatchNormPolicy) for p in policy.policies()):
        return policy
    return policy + bn
