"""What runs leave behind: trackers (TensorBoard, MLflow), figures, an evaluation's result, ``metrics.json`` and
``status.json``, sweep summaries and the Hydra callbacks that write them.

Imports ``schema``, ``system``, ``data`` and ``models``; never ``engine``, ``studies`` or an entry point.
"""
