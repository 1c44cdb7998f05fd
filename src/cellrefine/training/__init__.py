"""Fine-tuning (and training from scratch) of CellRefine models.

The public entry points are :func:`iter_finetune` (a generator, for threads
and GUIs) and :func:`finetune` (runs it to the end); :func:`finetune_summary`
says what a fine-tune did. The modules, in the order a run uses them:

* :mod:`.settings`: :class:`TrainSettings` (alias :class:`FinetuneSettings`), every hyper-parameter;
* :mod:`.inputs`: input checks, :func:`collect_planes`, :func:`reviewed_mask_from_labelled_planes`;
* :mod:`.orientations`: which XY/XZ/YZ planes of a stack are training planes (``slice_axes``), Z resampling of XZ/YZ planes;
* :mod:`.samples`: targets and loss weights (:func:`prepare_sample`), lazy :class:`SampleSet`, :class:`Sampler`;
* :mod:`.augment`, :mod:`.losses`, :mod:`.loop`: augmentation, loss, the optimisation loop;
* :mod:`.scoring`: checkpoint scoring on held-back reviewed pixels, at a bounded cost;
* :mod:`.calibrate`, :mod:`.evaluation`: threshold re-picking and before/after figures;
* :mod:`.report`: provenance and :func:`finetune_summary`; :mod:`.finetune`: the run itself.

Importing this package does not import torch.
"""

from __future__ import annotations

from .augment import augment
from .calibrate import CALIBRATION_GRID, calibrate_postprocess
from .finetune import PHASES, FinetuneUpdate, finetune, iter_finetune
from .inputs import LabelsWarning, Plane, collect_planes, looks_like_class_map, reviewed_mask_from_labelled_planes
from .loop import Step, freeze_batchnorm, learning_rate_at, optimize, training_autocast_dtype
from .losses import weighted_loss
from .report import finetune_summary
from .samples import Sampler, SampleSet, TrainingSample, crop_padded, prepare_sample, prepare_samples
from .settings import FinetuneSettings, TrainSettings

__all__ = [
    "iter_finetune",
    "finetune",
    "FinetuneUpdate",
    "PHASES",
    "TrainSettings",
    "FinetuneSettings",
    "finetune_summary",
    "reviewed_mask_from_labelled_planes",
    "collect_planes",
    "LabelsWarning",
    "looks_like_class_map",
    "Plane",
    "prepare_sample",
    "prepare_samples",
    "TrainingSample",
    "SampleSet",
    "Sampler",
    "crop_padded",
    "augment",
    "weighted_loss",
    "optimize",
    "Step",
    "freeze_batchnorm",
    "learning_rate_at",
    "training_autocast_dtype",
    "calibrate_postprocess",
    "CALIBRATION_GRID",
]
