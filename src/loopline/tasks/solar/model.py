"""Solar's forecaster is the forecast family's (`loopline.tasks.forecast.model`)."""

from loopline.tasks.forecast.model import Forecaster, Predictor

__all__ = ["Forecaster", "Predictor"]
