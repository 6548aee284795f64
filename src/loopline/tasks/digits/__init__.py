"""The digits task package: everything about the task lives here."""

from loopline.tasks.digits.task import DigitsTask

__all__ = ["DigitsTask"]
