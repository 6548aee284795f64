"""The solar task package: everything about the task lives here."""

from loopline.tasks.solar.task import SolarTask

__all__ = ["SolarTask"]
