"""The online process: a published model answering requests.

`models` loads and checks a registry version (ONNX Runtime); `adapter` is the contract a
task's `Serving` class fills in (request items in, answers out); `predlog` and `live`
record what was asked and answered; `consume` and `stream_client` move readings in from a
broker or a file. The HTTP service itself (`serving/`) is a framework class over these.
"""

from loopline._moved import forward

# `loopline.online` was the module `loopline.online.models` is now.
__getattr__ = forward(__name__, "loopline.online.models")
