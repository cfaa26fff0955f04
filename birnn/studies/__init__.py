"""Choosing among runs: validation splits for sweeps (``selection.py``), the search space, and the Optuna study
behind ``birnn-search`` (objective, pruning, storage).

Imports every package below it (``schema``, ``system``, ``data``, ``models``, ``records``, ``engine``).
"""
