"""The training engine: a run's state and its resume (``run.py``), the step and evaluation pass (``loop.py``),
checkpoints and restoring a model from one, the run-dir lock, schedules, signals.

A change to how training proceeds goes here; what a run records goes to ``birnn.records``. Imports
``schema``, ``system``, ``data``, ``models`` and ``records``; never ``studies`` or an entry point.
"""
