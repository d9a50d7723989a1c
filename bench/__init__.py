"""Benchmarks of the ncf tool. Run from the repository root as modules (``python -m bench.train_bench``), or from
anywhere once the project is installed (``pip install -e .``); each appends its results with command, machine and
date."""
