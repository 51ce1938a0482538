"""lmms-eval integration material: offline mini-benchmark builders (:mod:`eval.builders`) and task YAMLs (``eval/tasks``)."""
