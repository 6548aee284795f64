"""Moved to `loopline.offline.export`, and the ONNX Runtime calls to `loopline.onnx_runtime`
(this name stays for task packages written before)."""

from loopline._moved import forward

_RUNTIME = "loopline.onnx_runtime"
__getattr__ = forward(
    __name__,
    "loopline.offline.export",
    dict.fromkeys(
        [
            "INPUT_NAME",
            "OUTPUT_NAME",
            "SPEC_KEY",
            "embedded_spec",
            "onnx_session",
            "run_onnx",
            "run_onnx_outputs",
        ],
        _RUNTIME,
    ),
)
