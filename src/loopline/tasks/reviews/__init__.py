"""The reviews task package: everything about the task lives here."""

from loopline.tasks.reviews.task import ReviewsTask

__all__ = ["ReviewsTask"]
