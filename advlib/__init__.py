"""advlib: a thin library for a reproducible study of FGSM and friends on a small MNIST ResNet.

Modules, one concern each: data (fetch, verify, cache MNIST), model (SmallResNet, BatchNorm folding), train,
parallel (data-parallel training over processes), checkpoint, attacks (FGSM, sweep, BIM/PGD; eps in normalized
[-1, 1] units), metrics, plotting, explorer (the eps slider), stage (one way into a stage notebook), results
(metrics.json and its tables), pipeline (the workflow's steps; the Snakefile runs them), html_report (the
self-contained page), readme (the README's generated tables).
"""
__version__ = "0.1.0"
