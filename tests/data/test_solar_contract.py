"""The data contract on the built-in data: every real reading passes the suite."""

from loopline.params import parse_params
from loopline.tasks import get_task
from loopline.offline.validate import validate_rows


def test_builtin_solar_data_meets_its_contract():
    params = parse_params({})
    solar = get_task("solar")
    frame = solar.load_builtin(params)
    assert len(frame) == 8760 * 2
    report = validate_rows(frame, solar.schema, solar.rules(params), "solar")
    assert report.bad.empty, report.bad.head()
    assert report.ge_success
