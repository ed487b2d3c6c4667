"""advlib: a thin library for a reproducible study of FGSM and friends on a small MNIST ResNet.

Modules, one concern each: data (fetch, verify, cache MNIST), model (SmallResNet), train, checkpoint,
attacks (FGSM, sweep, BIM/PGD; eps in normalized [-1, 1] units), metrics, plotting, results (metrics.json),
explorer (the eps slider), pipeline (papermill).
"""
__version__ = "0.1.0"
