"""Training losses: stage 1 (student), the monocular teacher, and GT normalisation.

Public entry points for the trainer:

* :func:`normalize_batch` -- GT in view 0's frame divided by the per-sample point scale.
* :func:`stage1_loss` with :class:`Stage1LossConfig`.
* :func:`teacher_loss` with :class:`TeacherLossConfig`.
"""

from .normalize import normalize_batch, supervised_mask
from .stage1 import Stage1LossConfig, stage1_loss
from .teacher import TeacherLossConfig, teacher_loss

__all__ = ["Stage1LossConfig", "TeacherLossConfig", "normalize_batch", "stage1_loss",
           "supervised_mask", "teacher_loss"]
