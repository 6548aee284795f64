"""The digit classifier service: handwritten digits from the registry's champion CNN.

Run it with `loopline serve --model digits` (`bentoml serve serving.digits:DigitClassifier`).
The same lifecycle as the other services (`serving.champion`).

- `POST /predict` {"images": [[[...]]]}: images as arrays (size × size for a grey model,
  channels × size × size for an RGB one; values 0..1, ink high), answered with class
  probabilities; an image of the wrong shape is a 400 naming it.
- `POST /predict_image`: one PNG or JPEG upload (multipart field `file`); not an image, too
  large or of an unsupported channel count is a 4xx naming the problem.
- `POST /explain_image`: the same upload, answered with its occlusion saliency map
  (`loopline.tasks.digits.saliency`, on the ONNX model) as a PNG: red pixels support the
  answer, blue
  ones speak against it; the answer is in the `X-Loopline-*` headers. `?format=json` gives
  the map as numbers instead.
"""

from __future__ import annotations

import time
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from loopline.export import run_onnx
from loopline.online import LoadedModel
from loopline.predlog import PredictionRecord
from loopline.tasks.digits.saliency import occlusion_saliency, saliency_png
from loopline.tasks.digits.task import BadImage, image_from_bytes
from serving.asgi import BodySizeLimit
from serving.champion import BOOT, ChampionService

app = FastAPI(title="Loopline digits")


@bentoml.service(name="loopline-digits", workers=BOOT.workers)
@bentoml.asgi_app(app, path="/")
class DigitClassifier(ChampionService):
    """Handwritten digit recognition from the registry's champion."""

    task_name = "digits"

    def _answer(self, api: str, model: LoadedModel, images: np.ndarray) -> list[dict[str, Any]]:
        started = time.perf_counter()
        probabilities = run_onnx(model.session, images.astype(np.float32))
        seconds = time.perf_counter() - started
        labels = model.spec.options["labels"]
        answers = [
            {
                "label": labels[int(p.argmax())],
                "probabilities": {k: round(float(v), 6) for k, v in zip(labels, p, strict=True)},
                "model_version": model.version,
            }
            for p in probabilities
        ]
        self.record(
            api,
            model,
            [
                PredictionRecord(
                    model_name=model.name,
                    model_version=model.version,
                    api=api,
                    key=None,
                    origin=None,
                    inputs={"shape": list(images.shape[1:])},
                    output={"label": a["label"]},
                    latency_ms=seconds * 1000 / len(answers),
                )
                for a in answers
            ],
            seconds,
        )
        return answers

    @bentoml.api
    def predict(self, images: list[list[list[Any]]]) -> list[dict[str, Any]]:
        """Classify images given as arrays (0..1, ink high): rows of pixel values for a grey
        model, or channels of rows for an RGB one."""
        model = self._serving()
        size, channels = int(model.spec.options["image_size"]), int(model.spec.options["channels"])
        expected = (size, size) if channels == 1 else (channels, size, size)
        arrays = []
        for i, image in enumerate(images):
            try:
                array = np.asarray(image, dtype=np.float32)
            except (ValueError, TypeError):
                array = None  # ragged rows or non-numbers
            if array is None or array.shape != expected:
                shape = "ragged" if array is None else "×".join(map(str, array.shape))
                raise bentoml.exceptions.InvalidArgument(
                    f"images[{i}] is {shape}; the model reads {'×'.join(map(str, expected))}"
                )
            arrays.append(array.reshape(channels, size, size))
        if not arrays:
            return []
        return self._answer("predict", model, np.stack(arrays))

    async def _upload(self, file: UploadFile) -> tuple[LoadedModel, np.ndarray] | JSONResponse:
        """The serving model and the uploaded image, or the 4xx/503 response to send."""
        model = self.model
        if model is None:
            return JSONResponse({"error": f"not ready: {self.not_ready_reason}"}, 503)
        data = await file.read()
        settings = self.params.digits
        try:
            image = image_from_bytes(
                data, model.spec, settings.max_upload_side, settings.upload_ink
            )
        except BadImage as error:
            return JSONResponse({"error": f"{file.filename}: {error}"}, error.status)
        return model, image

    @app.post("/predict_image")
    async def predict_image(self, file: UploadFile = File(...)):  # noqa: B008 - FastAPI idiom
        """Classify one uploaded PNG or JPEG (grey or RGB)."""
        read = await self._upload(file)
        if isinstance(read, JSONResponse):
            return read
        model, image = read
        return self._answer("predict_image", model, image[None])[0]

    @app.post("/explain_image")
    async def explain_image(
        self,
        file: UploadFile = File(...),  # noqa: B008 - FastAPI idiom
        format: str = Query("png", pattern="^(png|json)$"),
    ):
        """Which pixels the answer rests on: an occlusion saliency map of one upload."""
        read = await self._upload(file)
        if isinstance(read, JSONResponse):
            return read
        model, image = read
        answer = self._answer("explain_image", model, image[None])[0]
        saliency = occlusion_saliency(
            lambda batch: run_onnx(model.session, batch), image, self.params.digits.saliency_patch
        )
        if format == "json":
            return {**answer, "saliency": np.round(saliency.map, 6).tolist()}
        headers = {
            "X-Loopline-Label": answer["label"],
            "X-Loopline-Probability": f"{saliency.probability:.6f}",
            "X-Loopline-Model-Version": str(model.version),
        }
        return Response(saliency_png(image, saliency.map), media_type="image/png", headers=headers)

    @app.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        return self.status()


DigitClassifier.add_asgi_middleware(BodySizeLimit, limit=BOOT.max_body_bytes)
