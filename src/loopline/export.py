"""Moved to `loopline.offline.export`, and the ONNX Runtime calls to `loopline.onnx_runtime`
(this name stays for task packages written before)."""

from loopline import onnx_runtime
from loopline._moved import forward

__getattr__ = forward(
    __name__, "loopline.offline.export", dict.fromkeys(onnx_runtime.__all__, onnx_runtime.__name__)
)
