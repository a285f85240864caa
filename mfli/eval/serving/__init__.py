"""The serving benchmark (:mod:`mfli.eval.serving_bench`), one module per concern: config, machine, data,
timing, methods, report."""
