"""The text family: any texts → any label set, configured in params.yaml's `text:` section."""

from loopline.tasks.text.task import TextTask

__all__ = ["TextTask"]
