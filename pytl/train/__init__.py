"""The two-stage trainer: align domains with CE + λ·MMD², then fine-tune on the few target labels.

Stage 1 (``align``) trains on labelled source batches and unlabelled target batches: the source
classification loss keeps the features discriminative, the MMD² term between source and target
embeddings pulls the two domains together (the Ben-David bound's divergence term). Stage 2
(``finetune``) adapts the model to the labelled target samples under a freezing policy. Every MMD
is the fused ``pytl.mmd2`` op.

Under torchrun (torch.distributed initialised) the trainer runs with DistributedDataParallel: each
rank trains on its shard of every global batch, the MMD² is that of the global batch (or, with
``mmd_scope="per_rank"``, of each rank's shard), metrics are reduced over ranks and only rank 0
prints and writes checkpoints (docs/distributed.md). ``checkpoint=`` writes one after every epoch and
``fit(..., resume_from=path)`` continues from it, in a single process or on any number of ranks.

The package, layer by layer: trainer.py (settings, public API) → loop.py (the one stage loop) →
steps.py (each stage's batches and loss, λ schedules, the DDP objective) → batches.py, evaluate.py,
metrics.py, checkpoint.py, ddp.py, validation.py (fine-tuning's held-out split and early stopping), with
prepare.py (every check before training) beside them.
"""

from pytl.train.checkpoint import CHECKPOINT_FORMAT
from pytl.train.evaluate import eval_mode
from pytl.train.prepare import resolve_device
from pytl.train.steps import LAMBDA_SCHEDULES, ScheduleLike, lambda_factor
from pytl.train.trainer import OPTIMIZERS, EvalData, OptimizerLike, TwoStageTrainer
from pytl.train.validation import CLIMB_TOLERANCE, stratified_split, validation_loss_climbs

__all__ = ["CHECKPOINT_FORMAT", "CLIMB_TOLERANCE", "LAMBDA_SCHEDULES", "OPTIMIZERS", "EvalData", "OptimizerLike",
           "ScheduleLike", "TwoStageTrainer", "eval_mode", "lambda_factor", "resolve_device", "stratified_split",
           "validation_loss_climbs"]
