"""Benchmark tasks as data, with no model in sight: the task schema, the task readers, checked task data and
the metrics. ``bench`` scores models on them and ``corpus prepare --decontaminate SUITE`` reads their test
splits; both sit above this package, which imports nothing from either.

From the bottom up (each module imports only those above it in this list, never one below):

* :mod:`.registry` -- the ``Registry`` of task formats (readers) and metrics that outsiders extend;
* :mod:`.builtin` -- ``FORMATS`` and ``METRICS``: the built-in readers and metrics, one table each;
* :mod:`.spec` -- :class:`~.spec.TaskSpec`, the schema of a task YAML (checks ``format``/``metric`` by name);
* :mod:`.suites` -- loading one task file, a suite folder, ``--override`` entries, every shipped task;
* :mod:`.readers` -- one module per kind of data (``base``: the ``Example`` record and the skip policy;
  ``tagging``, ``labelled``, ``text``, ``structures``), reading unlabelled text through
  :mod:`domainlm.documents`;
* :mod:`.data` -- from a task's files to checked splits (``load_data``);
* :mod:`.priors` -- answer priors, paired-bootstrap p-values and family-wise verdicts;
* :mod:`.metrics` -- the metrics, with bootstrap confidence intervals.
"""
