"""Models: the recurrent classifier, its readouts, the last-step shortcut, and building any model component.

A new model is a ``torch.nn.Module`` taking ``input_size`` and ``num_classes`` in a module here, named by
``model._target_`` and added to the trust rule's built-in list. Imports ``birnn.schema`` and ``birnn.system``.
"""

from birnn.models.rnn import RNNClassifier, build_model

__all__ = ["RNNClassifier", "build_model"]
