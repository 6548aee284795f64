"""ONNX Runtime on an exported model: a session, the feature spec it carries, its outputs.

Torch-free on purpose: the service (and its image) runs models through here without the
training stack; `offline.export` writes the models and checks parity through the same calls.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from loopline.offline.features import FeatureSpec

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "SPEC_KEY",
    "embedded_spec",
    "onnx_session",
    "run_onnx",
    "run_onnx_outputs",
]

INPUT_NAME = "x"
OUTPUT_NAME = "output"  # a task names its outputs itself (`exportable()`)
SPEC_KEY = "loopline.feature_spec"


def onnx_session(path: Path | bytes, threads: int = 0):
    """An onnxruntime CPU session (the service picks GPU providers itself)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def embedded_spec(session, task=None):
    """The FeatureSpec stored in an ONNX model's metadata at export (typed by `task`, which
    must be the model's; default: the task the spec names)."""
    metadata = session.get_modelmeta().custom_metadata_map
    if SPEC_KEY not in metadata:
        raise ValueError(f"the ONNX model carries no {SPEC_KEY!r} metadata")
    return FeatureSpec.from_json(metadata[SPEC_KEY], task)


_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def run_onnx_outputs(session, x: np.ndarray) -> list[np.ndarray]:
    """Every output of the model for inputs `x`, cast to the type its input declares
    (float features for most models, int64 token ids for a text model)."""
    dtype = _INPUT_TYPES.get(session)
    if dtype is None:  # asked once per session: `get_inputs` builds its answer each call
        dtype = _INPUT_TYPES[session] = _ONNX_TYPES.get(session.get_inputs()[0].type, np.float32)
    return session.run(None, {INPUT_NAME: x.astype(dtype, copy=False)})


_INPUT_TYPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def run_onnx(session, x: np.ndarray) -> np.ndarray:
    """The model's first output: a regressor's values, or a classifier's probabilities."""
    return run_onnx_outputs(session, x)[0]
