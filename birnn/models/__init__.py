"""Models: the recurrent classifier, its readouts, the last-step shortcut, LSTM-FCN, InceptionTime, and building any
model component.

A new model is a ``torch.nn.Module`` taking ``input_size`` and ``num_classes`` in a module here, named by
``model._target_`` and added to the trust rule's built-in list. Imports ``birnn.schema`` and ``birnn.system``.
"""

from birnn.models.inception_time import InceptionTime
from birnn.models.lstm_fcn import LSTMFCN
from birnn.models.rnn import RNNClassifier, build_model

__all__ = ["InceptionTime", "LSTMFCN", "RNNClassifier", "build_model"]
