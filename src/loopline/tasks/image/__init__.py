"""The image family: images (a folder, or built-in arrays) → any label set, configured in
params.yaml's `image:` section."""

from loopline.tasks.image.task import ImageTask

__all__ = ["ImageTask"]
