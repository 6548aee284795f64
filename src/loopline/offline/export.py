"""Export: torch → ONNX with a dynamic batch axis, and a parity check that gates publishing.

The feature spec is embedded in the ONNX file's metadata, so the model file alone says how
to compute its inputs. A model whose served graph is not a torch program (`ExportsItself`:
say, scikit-learn trees converted by skl2onnx) writes its ONNX model itself; its parity is
checked like any other's.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from loopline._moved import forward
from loopline.errors import ParityError
from loopline.onnx_runtime import (
    INPUT_NAME,
    OUTPUT_NAME,
    SPEC_KEY,
    onnx_session,
    run_onnx_outputs,
)

# The ONNX Runtime calls (`run_onnx`, `embedded_spec`, ...) moved to `loopline.onnx_runtime`,
# which the service imports without torch; task packages importing them from here still work.
__getattr__ = forward(__name__, "loopline.onnx_runtime")


def export_onnx(
    module: torch.nn.Module,
    example: np.ndarray,
    path: Path,
    metadata: dict[str, str],
    dynamic_axes: dict[int, str] | None = None,
    output_names: list[str] | None = None,
) -> Path:
    """Write `module` as ONNX to `path`; batch (axis 0) and any `dynamic_axes` of the
    input (say, {1: "tokens"} for texts) stay dynamic.

    The example must hold at least two rows: with one, the exporter silently fixes batch = 1
    (likewise, a dynamic axis needs an example longer than 1 along it).
    """

    from torch.export import Dim

    # dynamic_shapes is keyed by the name of forward's (single) input argument.
    argument = next(iter(inspect.signature(module.forward).parameters))

    if example.shape[0] < 2:
        raise ValueError("export needs an example batch of at least 2 rows (batch-1 trap)")
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            input_names=[INPUT_NAME],
            output_names=output_names or [OUTPUT_NAME],
            dynamic_shapes={
                argument: {0: Dim("batch"), **{a: Dim(n) for a, n in (dynamic_axes or {}).items()}}
            },
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return save_onnx(program.model_proto, path, metadata)


def save_onnx(model, path: Path, metadata: dict[str, str]) -> Path:
    """Write the ONNX `model` (a ModelProto) to `path` with `metadata`, checked first."""
    import onnx

    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save_model(model, tmp)
    tmp.replace(path)
    return path


@runtime_checkable
class ExportsItself(Protocol):
    """A model that makes its own ONNX graph instead of `torch.onnx.export` (say, a
    scikit-learn estimator converted by skl2onnx).

    `onnx_model(example)` returns a ModelProto whose one input is `INPUT_NAME` (float32,
    dynamic batch axis, as `example`) and whose outputs are what `exportable()`'s module
    returns, in order and by its output names. `exportable()` stays the reference: parity
    is checked between that module and the ONNX model, as for every model."""

    def onnx_model(self, example: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    max_rel_diff: float
    rows: int
    passed: bool


def check_parity(
    module: torch.nn.Module, onnx_path: Path, golden: np.ndarray, atol: float, rtol: float
) -> Parity:
    """Compare onnxruntime with PyTorch on a golden batch; raise ParityError past tolerance."""
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(golden))
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    actual = run_onnx_outputs(onnx_session(onnx_path), golden)
    # Every output is checked: a classifier's attention weights are served too.
    max_abs, max_rel, passed = 0.0, 0.0, len(actual) == len(expected)
    for mine, theirs in zip(actual, expected, strict=False):
        if mine.shape != theirs.shape:
            raise ParityError(f"ONNX output shape {mine.shape} != PyTorch {theirs.shape}")
        diff = np.abs(mine - theirs)
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        rel = diff / np.maximum(np.abs(theirs), 1e-12)
        max_rel = max(max_rel, float(rel.max(initial=0.0)))
        passed &= bool(np.allclose(mine, theirs, atol=atol, rtol=rtol))
    result = Parity(max_abs, max_rel, len(golden), passed)
    if not passed:
        raise ParityError(
            f"ONNX parity check failed on {len(golden)} golden rows: max |diff| "
            f"{result.max_abs_diff:.3g} exceeds export.parity_atol={atol:g} / "
            f"parity_rtol={rtol:g}; nothing was published"
        )
    return result


def export_and_check(
    model: torch.nn.Module,
    golden: np.ndarray,
    path: Path,
    metadata: dict[str, str],
    atol: float,
    rtol: float,
) -> Parity:
    """Export what the model says it serves (`model.exportable()`: a regressor's values in
    target units, a classifier's probabilities and attention) and check parity on `golden`;
    a model that `ExportsItself` writes the ONNX graph itself."""
    module, dynamic_axes, output_names = model.exportable()
    if isinstance(model, ExportsItself):
        save_onnx(model.onnx_model(golden), path, metadata)
    else:
        export_onnx(module, golden, path, metadata, dynamic_axes, output_names)
    return check_parity(module, path, golden, atol, rtol)


@dataclass(frozen=True)
class Exported:
    """A model ready to publish: its ONNX bytes (not a path: a cached export outlives the
    folder it was written in), its feature spec, and the golden batch parity was checked on."""

    onnx_model: bytes
    spec: Any
    golden: np.ndarray
    parity: Parity


def export_model(
    task: Any, frame, spec: Any, model: torch.nn.Module, settings: Any, folder: Path
) -> Exported:
    """Export `model` to `folder`/model.onnx with its spec embedded, and check parity on a
    golden batch (`settings`: the `export` params section)."""
    # The golden batch comes from validation examples: the test set is evaluate's alone.
    golden = task.examples(frame, spec, "val").x[: settings.golden_batch]
    path = folder / "model.onnx"
    parity = export_and_check(
        model, golden, path, {SPEC_KEY: spec.to_json()}, settings.parity_atol, settings.parity_rtol
    )
    return Exported(path.read_bytes(), spec, golden, parity)
