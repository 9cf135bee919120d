"""The statistics of safespace-tasks: pure functions of arrays (numpy, scipy, scikit-learn; no torch, no lm-eval)."""
