"""The reference the serving benchmarks measure Loopline against: bare BentoML services.

Each is what a person writes by hand to serve one ONNX model with BentoML and nothing else:
one `@bentoml.service`, one batchable `@bentoml.api` over a typed list of the model's own
inputs, onnxruntime with one thread, the access log and tracing off, `max_batch_size=64`,
`max_latency_ms=2000`. No data contract, no features, no prediction log, no live inputs,
no hot swap: the floor any BentoML-based server reaches on the machine.

  BareForecast   `{"windows": [{"x": [[float, ...], ...]}, ...]}`: prepared model inputs
                 (steps x features), answered `[{"forecast": [...]}, ...]`
  BareText       `{"texts": [{"ids": [int, ...]}, ...]}`: each text's token ids, as the
                 champion's own vocabulary gives them (its input `x`: int64, batch x
                 tokens, 0 = padding, padded here to the batch's longest text),
                 answered `[{"probabilities": [...]}, ...]`
  BareImage      `{"images": [{"pixels": [[[float, ...], ...], ...]}, ...]}`: each image
                 as channels x rows x columns of 0..1 values (its input `x`: float32,
                 batch x channels x size x size), answered `[{"probabilities": [...]}, ...]`

Started by the benchmarks as users start a service:
`BARE_MODEL=model.onnx bentoml serve benchmarks.bare_service:BareForecast --port P`.
"""

# No `from __future__ import annotations`: BentoML reads the APIs' annotations.

import os

import bentoml
import numpy as np
from pydantic import BaseModel

SETTINGS = {
    "workers": 1,
    "logging": {"access": {"enabled": False}},
    "tracing": {"excluded_urls": [".*"]},
    "traffic": {"timeout": 3600},
}
BATCHING = {"batchable": True, "max_batch_size": 64, "max_latency_ms": 2000}


def session():
    """The model at `BARE_MODEL` in onnxruntime, one thread, CPU (as Loopline serves it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        os.environ["BARE_MODEL"], options, providers=["CPUExecutionProvider"]
    )


class Window(BaseModel):
    x: list[list[float]]


class Forecast(BaseModel):
    forecast: list[float]


@bentoml.service(name="bare-forecast", **SETTINGS)
class BareForecast:
    def __init__(self) -> None:
        self.session = session()

    @bentoml.api(**BATCHING)
    def predict(self, windows: list[Window]) -> list[Forecast]:
        x = np.asarray([w.x for w in windows], dtype=np.float32)
        out = self.session.run(None, {"x": x})[0]
        return [Forecast(forecast=row) for row in out.round(3).tolist()]


class Text(BaseModel):
    ids: list[int]  # token ids, no padding: the client tokenizes


class Classes(BaseModel):
    probabilities: list[float]  # in the model's label order


@bentoml.service(name="bare-text", **SETTINGS)
class BareText:
    def __init__(self) -> None:
        self.session = session()

    @bentoml.api(**BATCHING)
    def predict(self, texts: list[Text]) -> list[Classes]:
        # Padded with 0 to the batch's longest text, as the model was trained and exported
        # (padding is masked inside it); the second output (attention) is not sent.
        width = max(1, max(len(t.ids) for t in texts))
        x = np.zeros((len(texts), width), dtype=np.int64)
        for n, text in enumerate(texts):
            x[n, : len(text.ids)] = text.ids
        out = self.session.run(None, {"x": x})[0]
        return [Classes(probabilities=row) for row in out.tolist()]


class Image(BaseModel):
    pixels: list[list[list[float]]]  # channels x rows x columns, 0..1, ink high


@bentoml.service(name="bare-image", **SETTINGS)
class BareImage:
    def __init__(self) -> None:
        self.session = session()

    @bentoml.api(**BATCHING)
    def predict(self, images: list[Image]) -> list[Classes]:
        x = np.asarray([i.pixels for i in images], dtype=np.float32)
        out = self.session.run(None, {"x": x})[0]
        return [Classes(probabilities=row) for row in out.tolist()]
