"""The image family (`loopline.tasks.image`): settings, a folder of images, label sets.

The images are drawn here (a few tiny PNGs); no model is trained.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.errors import ConfigError
from loopline.params import parse_params


def params(**section):
    return parse_params({"task": "image", "image": {"image_size": 4, **section}})


def write_folder(folder, labels: dict[str, str]):
    """One 6×6 PNG per file (a dark square on light paper) and the labels CSV."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    for name in labels:
        pixels = np.full((6, 6), 255, dtype=np.uint8)
        pixels[1:4, 1:4] = 0
        Image.fromarray(pixels).save(folder / name)
    table = pd.DataFrame({"file": list(labels), "label": list(labels.values())})
    table.to_csv(folder / "labels.csv", index=False)
    return folder


def test_bind_takes_size_channels_and_labels_from_the_section():
    p = params(image_size=6, channels=3, labels=["ring", 7])
    task = p.plugin
    schema = task.schema_for(p)
    assert schema["label"] == "string" and len(schema) == 2 + 6 * 6 * 3
    assert task.schema == schema and task.fixed_labels == ("ring", "7")
    spec = task.new_feature_spec(p)
    assert (spec.options.image_size, spec.options.channels) == (6, 3)
    assert spec.labels == ["ring", "7"]  # saved with the model: the service reads them
    assert params().plugin.fixed_labels is None


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"labels": ["ring"]}, "image.labels"),
        ({"image_size": 2}, "image.image_size"),
        ({"channels": 2}, "image.channels"),
        ({"size": 8}, "image.size: unknown key"),
    ],
)
def test_settings_it_cannot_work_with_are_refused_naming_the_key(section, named):
    with pytest.raises(ConfigError) as error:
        params(**section)
    assert named in str(error.value)


def test_labels_null_takes_the_training_splits_sorted_labels():
    p = params()
    task = p.plugin
    spec = task.new_feature_spec(p)
    train = pd.DataFrame({"label": ["square", "ring", "cross", "ring", None]})
    assert task.fit_features(spec, train).labels == ["cross", "ring", "square"]
    numbers = pd.DataFrame({"label": ["10", "2", "3"]})
    assert task.fit_features(spec, numbers).labels == ["2", "3", "10"]


def test_a_folder_label_outside_a_fixed_set_is_quarantined_naming_the_value(tmp_path):
    from loopline.offline.validate import validate_rows

    p = params(labels=["ring", "square"])
    task = p.plugin
    folder = write_folder(
        tmp_path / "shapes",
        {"images/a.png": "ring", "images/b.png": "triangle", "images/c.png": "square"},
    )
    (folder / "labels.csv").write_text(
        (folder / "labels.csv").read_text() + "images/missing.png,ring\n"
    )
    rows = task.load_folder(folder, p)
    assert rows["label"].tolist() == ["ring", "triangle", "square", "ring"]
    report = validate_rows(rows, task.schema_for(p), task.rules(p), suite_name="image-test")
    reasons = dict(zip(report.bad["id"], report.bad["_reasons"], strict=True))
    assert reasons == {
        "images/b.png": "label_in_labels: label='triangle'",
        "images/missing.png": "image_readable",
    }


def test_digits_is_the_image_family_with_built_in_arrays():
    from loopline.tasks.digits import DigitsTask
    from loopline.tasks.image import ImageTask

    p = parse_params({"task": "digits"})
    task = p.plugin
    assert isinstance(task, DigitsTask) and isinstance(task, ImageTask)
    assert task.schema_for(p)["label"] == "float"
    assert task.label_names(pd.Series([3.0, np.nan])).tolist()[0] == "3"
    assert [r.name for r in task.rules(p)][2] == "label_is_a_digit"
    assert not hasattr(task.new_feature_spec(p), "horizon")  # a classifier has no steps
    with pytest.raises(ValueError, match="no built-in data"):
        params().plugin.load_builtin(params())
