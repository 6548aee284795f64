import pytest

from loopline.config import apply_overrides
from loopline.errors import ConfigError
from loopline.params import load_params, parse_params


def test_defaults_are_valid_and_fingerprint_is_stable():
    assert parse_params({}).fingerprint() == parse_params({}).fingerprint()
    assert parse_params({}).fingerprint() != parse_params({"seed": 1}).fingerprint()


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"train": {"patiense": 3}}, "train.patiense: unknown key"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"split": {"train": 0.9}}, "must be 1"),
        ({"tune": {"sampler": "bayes"}}, "tune.sampler"),
        ({"validate": {"max_bad_fraction": 2}}, "validate.max_bad_fraction"),
        ({"train": {"patience": 0}}, "train.patience"),
        ({"tune": {"search_space": {"depth": {"choices": [1]}}}}, "depth"),
        ({"tune": {"search_space": {"dropout": {"low": 0.5, "high": 0.1}}}}, "dropout"),
        ({"ingest": {"source": "x.csv", "query": "select 1"}}, "ingest.query"),
    ],
)
def test_bad_params_are_rejected_naming_the_key(raw, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_params(raw)


def test_overrides_parse_yaml_values_and_nest():
    raw = apply_overrides(
        {"tune": {"n_trials": 6}}, ["tune.n_trials=3", "solar.sites=[greensboro]"]
    )
    assert raw == {"tune": {"n_trials": 3}, "solar": {"sites": ["greensboro"]}}


def test_bad_override_is_rejected(tmp_path):
    (tmp_path / "params.yaml").write_text("task: solar\n")
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_params(tmp_path / "params.yaml", ["novalue"])
    with pytest.raises(ConfigError, match=r"train\.max_epochs"):
        load_params(tmp_path / "params.yaml", ["train.max_epochs=lots"])


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_repository_params_yaml_is_valid():
    from pathlib import Path

    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert params.task == "solar" and params.solar.horizon == 24


def test_time_bounds_accept_yaml_dates_and_reject_nonsense():
    import datetime

    assert parse_params({"ingest": {"end": datetime.date(2021, 3, 1)}}).ingest.end == "2021-03-01"
    with pytest.raises(ConfigError, match=r"ingest\.start"):
        parse_params({"ingest": {"start": "last tuesday"}})
