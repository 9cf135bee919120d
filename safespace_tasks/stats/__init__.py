"""The statistics of safespace-tasks: pure functions of arrays (numpy, scipy, scikit-learn; no torch, no lm-eval).

- :mod:`~safespace_tasks.stats.validation`: input checks, groups of texts, degenerate data.
- :mod:`~safespace_tasks.stats.pca`: exact, seed-free PCA.
- :mod:`~safespace_tasks.stats.kernels`: the separation metrics' kernels (point value and class-weighted form).
- :mod:`~safespace_tasks.stats.probe`: the linear probe (its one constructor) and its cross-fitted kernel.
- :mod:`~safespace_tasks.stats.separation`: :func:`~safespace_tasks.stats.separation.separation_metrics`,
  looping over the metric table's kernel rows for the point values, the bootstrap and the null.
- :mod:`~safespace_tasks.stats.paired`: the paired bootstrap of two models' difference.
- :mod:`~safespace_tasks.stats.pairs`: the paired shift of toxic / neutral pairs.
- :mod:`~safespace_tasks.stats.resampling`, :mod:`~safespace_tasks.stats.cv_interval`,
  :mod:`~safespace_tasks.stats.pca_refit`: bootstrap weights and intervals, the probe's
  cross-validation interval, the refitted-basis replicates.
- :mod:`~safespace_tasks.stats.transfer`: cross-lingual transfer of probes and directions.
- :mod:`~safespace_tasks.stats.behaviour`: behaviour metrics of generated text.
- :mod:`~safespace_tasks.stats.units`, :mod:`~safespace_tasks.stats.unit_nulls`: safety units and their nulls.

Which metrics exist is declared in :mod:`safespace_tasks.metric_table` only. The package's
``__init__`` imports nothing, so importing the table (which imports the kernels) stays cycle-free.
"""
