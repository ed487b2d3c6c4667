"""The study: a reproducible, interactive study of adversarial attacks on a small ResNet trained on MNIST, built on
advlib. Its jobs (stage entry points), model recipes, stage cache, results tables, figures, sanity checks, README
and HTML generators and the Snakemake workflow's helpers. advlib never imports this package."""
