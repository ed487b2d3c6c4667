"""advlib: gradient attacks (FGSM, its eps sweep, BIM, PGD) on any PyTorch image classifier, the metrics that make
their numbers judgeable, and the study's data (MNIST, Fashion-MNIST), model and training.

The attacks take any ``nn.Module`` returning logits and a float batch (N, C, H, W) inside ``bounds=(low, high)``
(default (0, 1)); eps is in the units of the inputs, and the number of classes comes from the model's output::

    >>> import advlib
    >>> x_adv = advlib.fgsm(model, images, labels, eps=8/255, bounds=(0, 1))
    >>> sweep = advlib.fgsm_sweep(model, images, labels, [0, 2/255, 4/255, 8/255], bounds=(0, 1))
    >>> x_pgd = advlib.pgd(model, images, labels, eps=8/255, bounds=(0, 1), steps=10, seed=0)

The study's tensors (``load_dataset('mnist' | 'fashion_mnist')``) are normalized to [-1, 1]: attack them with
``bounds=advlib.BOUNDS``; ``load_dataset(..., image_size=28, bounds=(0, 1))`` gives the raw 28x28 images in [0, 1]
instead, as most of the field uses them. Training is ``advlib.train.train(data, model_config, TrainConfig(...))``
for a SmallResNet (``ResNetConfig``) or Wong et al.'s SmallCNN (``SmallCNNConfig``), in the data's bounds: the
function is not re-exported here, where its name would hide the module ``advlib.train``.

Modules, one concern each: attacks, metrics, data (MNIST and Fashion-MNIST as verified, cached tensors), download (fetch and
verify the raw files, ``python -m advlib.download``; never imported here), model (SmallResNet, SmallCNN, BatchNorm
folding),
train, parallel (data-parallel training over processes), checkpoint; the optional extras viz (plotting
primitives, generic figures) and explorer (the eps slider) are imported on their own, never from here. The study
itself (stages, results, the workflow) lives in the separate package ``study``.
"""
from advlib.attacks import SweepResult, fgsm, fgsm_sweep, predict, to_normalized_eps, to_pixel_eps
from advlib.iterative import bim, pgd
from advlib.checkpoint import load_checkpoint, save_checkpoint
from advlib.data import BOUNDS, MNIST, class_names, load_dataset, load_mnist
from advlib.metrics import (accuracy, confusion_matrix, rate, robust_rows, robust_curves, roc_auc, roc_curve,
                            wilson_interval)
from advlib.model import ResNetConfig, SmallCNN, SmallCNNConfig, SmallResNet
from advlib.train import TrainConfig

__version__ = "0.1.0"

__all__ = [
    # attacks
    "fgsm", "fgsm_sweep", "pgd", "bim", "predict", "SweepResult", "to_pixel_eps", "to_normalized_eps",
    # metrics
    "accuracy", "rate", "wilson_interval", "robust_rows", "robust_curves", "confusion_matrix", "roc_curve",
    "roc_auc",
    # data
    "load_dataset", "load_mnist", "class_names", "MNIST", "BOUNDS",
    # model, training, checkpoints
    "SmallResNet", "ResNetConfig", "SmallCNN", "SmallCNNConfig", "TrainConfig", "save_checkpoint", "load_checkpoint",
]
