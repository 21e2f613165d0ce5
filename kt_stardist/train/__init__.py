"""Training: pretrain on StarDist's example nuclei, finetune on kinetochores, choose thresholds
through the prediction path, evaluate on held-out simulations.

Flow::

    (raw image, points px) pairs ─ predict.prepare (repair, rescale, normalise) ─ labels (spheres, µm)
      ─ fit (StarDist's patch sampler; augment; checkpoints; history; resume)
      ─▶ choose_thresholds (point F1 of predict.detect) ─▶ thresholds.json, model.json

Modules: :mod:`~kt_stardist.train.data`, :mod:`~kt_stardist.train.augment`,
:mod:`~kt_stardist.train.fit`, :mod:`~kt_stardist.train.thresholds`,
:mod:`~kt_stardist.train.evaluation`, :mod:`~kt_stardist.train.jobs`. TensorFlow/StarDist are
imported lazily.
"""

from kt_stardist.train.augment import GEOMETRIC_AUGMENT, make_augmenter
from kt_stardist.train.data import example_data, folder_data, read_pairs, simulated_pairs, to_arrays
from kt_stardist.train.evaluation import (EvalCase, evaluate_detector, evaluate_model, evaluation_cases,
                                          summarize)
from kt_stardist.train.fit import LEARNING_RATE, OPTIMIZER_STATE, fit, load_optimizer_state
from kt_stardist.train.jobs import TRAIN_SETTINGS, finetune, pretrain
from kt_stardist.train.thresholds import choose_thresholds, record_calibration

__all__ = [
    "pretrain", "finetune", "choose_thresholds", "record_calibration", "evaluate_model", "evaluate_detector", "evaluation_cases",
    "summarize", "EvalCase", "fit", "make_augmenter", "GEOMETRIC_AUGMENT", "example_data", "folder_data",
    "read_pairs", "simulated_pairs", "to_arrays", "load_optimizer_state", "LEARNING_RATE", "OPTIMIZER_STATE",
    "TRAIN_SETTINGS",
]
