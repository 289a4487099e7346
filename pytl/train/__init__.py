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

The package, layer by layer: trainer.py (the model, its settings and its runs' state; the public API)
→ loop.py (the one stage loop) → steps.py (each stage's batches and loss, the DDP objective) →
alignments/ (stage 1's terms, one file each, and their registry), class_weights.py, batches.py,
evaluate.py, metrics.py, collapse.py (stage 1's collapse, warned), checkpoint.py, ddp.py, early_stopping.py
(fine-tuning's held-out split and early stopping), precision.py, with prepare.py (every check before training)
beside them; settings.py (``TrainSettings``: every option, declared once), state.py (``RunState``) and
schedules.py below them all.
"""

from pytl.inference import eval_mode
from pytl.train.alignments import ALIGNMENTS, Alignment, register
from pytl.train.checkpoint import CHECKPOINT_FORMAT
from pytl.train.collapse import TrainingWarning
from pytl.train.early_stopping import CLIMB_TOLERANCE, stratified_split, validation_loss_climbs
from pytl.train.prepare import resolve_device
from pytl.train.schedules import LAMBDA_SCHEDULES, ScheduleLike, lambda_factor
from pytl.train.settings import OPTIMIZERS, OptimizerLike, TrainSettings
from pytl.train.state import RunState
from pytl.train.trainer import EvalData, TwoStageTrainer

__all__ = ["ALIGNMENTS", "Alignment", "CHECKPOINT_FORMAT", "CLIMB_TOLERANCE", "LAMBDA_SCHEDULES", "OPTIMIZERS",
           "EvalData", "OptimizerLike", "RunState", "ScheduleLike", "TrainSettings", "TrainingWarning",
           "TwoStageTrainer", "eval_mode", "lambda_factor", "register", "resolve_device", "stratified_split",
           "validation_loss_climbs"]
