"""The project's configuration loader, as `kedro run` builds it from settings.py."""

import shutil

import yaml
from kedro.config import OmegaConfigLoader

from kedro_torch import settings
from tests.conftest import PROJECT_ROOT


def test_local_parameters_and_params_override_key_by_key(tmp_path):
    shutil.copytree(PROJECT_ROOT / "conf" / "base", tmp_path / "base")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "parameters.yml").write_text(
        yaml.safe_dump({"training": {"epochs": 2}}))
    loader = OmegaConfigLoader(str(tmp_path), **settings.CONFIG_LOADER_ARGS,
                               runtime_params={"tuning": {"n_trials": 3}})
    parameters = loader["parameters"]
    base = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_tuning.yml").read_text())
    # --params changed one key of a section conf/local does not name; the rest stays.
    assert parameters["tuning"] == {**base["tuning"], "n_trials": 3}
    # conf/local changed one key of a section; the others keep conf/base's values.
    assert parameters["training"]["epochs"] == 2
    assert parameters["training"]["optimizer"]["name"] == "AdamW"
