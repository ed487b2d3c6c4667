"""Speed and memory benchmarks of advlib (issue 4): ``python -m benchmarks`` (see benchmarks/__main__.py)."""

EPS_GRID = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]  # normalized units (images in [-1, 1]), as in the report
