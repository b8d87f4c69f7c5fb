"""Config precedence and validation: every bad value names its key and its source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lib import config as config_mod
from lib.config import Config
from lib.errors import ConfigError


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    toml = tmp_path / "ops-hpc.toml"
    toml.write_text('zone = "europe-west4-a"\nmachine_type = "c2d-standard-56"\nproject = "file-project"\n')
    env = {"OPS_HPC_ZONE": "us-east1-b", "OPS_HPC_PROJECT": "env-project"}

    cfg = Config.load({"zone": "asia-east1-c", "project": None}, env=env, path=toml)

    assert cfg.zone == "asia-east1-c"  # flag
    assert cfg.project == "env-project"  # env beats file; None flag means not given
    assert cfg.machine_type == "c2d-standard-56"  # file
    assert cfg.image_family == "opensees-hpc"  # default
    assert cfg.region_name == "asia-east1"
    assert cfg.bucket_name == "env-project-ops-hpc"
    assert cfg.spot is False


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("zone", "us-central1", "expected a zone"),
        ("bucket", "My_Bucket", "bucket names use lowercase"),
        ("bucket", "ab", "3-63"),
        ("bucket", "google-results", "google"),
        ("bucket", "192.168.1.10", "IP"),
        ("machine_type", "88cores", "machine type"),
        ("upload_timeout_min", "thirty", "whole number"),
        ("upload_timeout_min", "-5", "whole number"),
        ("spot", "maybe", "true or false"),
        ("backend", "aws", "'local' or 'gcp'"),
        ("time_scale", "0", "above 0"),
        ("project", "X", "project id"),
    ],
)
def test_invalid_values_name_key_and_source(key, value, needle):
    var = f"OPS_HPC_{key.upper()}"
    with pytest.raises(ConfigError) as err:
        Config.load(env={var: value}, path="")
    message = str(err.value)
    assert message.startswith(f"{key} = ")
    assert f"environment variable {var}" in message
    assert needle in message
    assert "\n" not in message
    assert err.value.code == 2


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "ops-hpc.toml"
    bad.write_text("zone = \n")
    with pytest.raises(ConfigError, match=re.escape(str(bad))):
        Config.load(env={}, path=bad)
    bad.write_text('zonee = "us-central1-a"\n')
    with pytest.raises(ConfigError, match="unknown key 'zonee'"):
        Config.load(env={}, path=bad)
    bad.write_text('upload_timeout_min = "x"\n')
    with pytest.raises(ConfigError, match=re.escape(f"upload_timeout_min = 'x' from {bad}")):
        Config.load(env={}, path=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(env={"OPS_HPC_CONFIG": str(tmp_path / "missing.toml")})


def test_flag_source_is_named():
    with pytest.raises(ConfigError, match=r"zone = 'nowhere' from --zone"):
        Config.load({"zone": "nowhere"}, env={}, path="")


def test_gcp_without_project_never_falls_back_to_local():
    cfg = Config.load(env={}, path="")
    assert cfg.backend == "gcp" and not cfg.local
    with pytest.raises(ConfigError) as err:
        cfg.require_project()
    assert "OPS_HPC_PROJECT" in str(err.value) and "make demo" in str(err.value)


def test_local_backend_has_its_own_project_and_bucket():
    cfg = Config.load({"backend": "local"}, env={}, path="")
    assert cfg.local and cfg.project == "ops-hpc-local" and cfg.bucket_name == "ops-hpc-local"


def test_example_file_documents_every_key_and_loads(tmp_path):
    example = config_mod.Path(__file__).resolve().parents[2] / "ops-hpc.example.toml"
    text = example.read_text()
    for key, _default, _env, _doc in config_mod.describe():
        assert re.search(rf"^#? ?{key} = ", text, re.M), f"{key} missing from ops-hpc.example.toml"
    # The uncommented lines are valid and equal the defaults.
    assert Config.load(env={}, path=example) == Config.load(env={}, path="")


@pytest.mark.parametrize(("env", "needle"), [
    ({"OPS_HPC_UPLOAD_TIMEOUT_MIN": "0"}, "upload_timeout_min = '0' from environment variable"),
    ({"OPS_HPC_TIME_SCALE": "60", "OPS_HPC_PROJECT": "my-project-1"}, "time_scale = 60 from environment variable"),
])
def test_values_that_would_make_a_safety_net_fire_early_are_refused(env, needle):
    """An upload window of 0 min deletes VMs mid-upload; a scaled clock on real VMs ends runs early."""
    with pytest.raises(ConfigError) as err:
        Config.load(env=env, path="")
    assert needle in str(err.value) and "\n" not in str(err.value) and err.value.code == 2
    local = Config.load(env={"OPS_HPC_BACKEND": "local", "OPS_HPC_TIME_SCALE": "60"}, path="")
    assert local.time_scale == 60


# -- gcloud conventions: project and zone below ops-hpc.toml ----------------------------------------------



def _gcloud(folder, name="work", **props):
    (folder / "configurations").mkdir(parents=True, exist_ok=True)
    (folder / "active_config").write_text(name)
    lines = []
    for section in sorted({k.split("/")[0] for k in props}):
        lines.append(f"[{section}]")
        lines += [f"{k.split('/')[1]} = {v}" for k, v in props.items() if k.startswith(section + "/")]
    (folder / "configurations" / f"config_{name}").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def gcloud_env(tmp_path):
    folder = _gcloud(tmp_path / "gcloud", **{"core/project": "from-gcloud", "compute/zone": "europe-west4-b"})
    (folder / "application_default_credentials.json").write_text(json.dumps(
        {"type": "authorized_user", "quota_project_id": "from-adc", "refresh_token": "x"}))
    return {"CLOUDSDK_CONFIG": str(folder)}


def test_project_precedence_flag_env_file_cloudsdk_gcloud_adc(tmp_path, gcloud_env):
    toml = tmp_path / "ops-hpc.toml"
    toml.write_text('project = "from-toml"\n')
    env = dict(gcloud_env)
    assert Config.load(env=env, path="").project == "from-gcloud"
    assert Config.load(env={**env, "GOOGLE_CLOUD_PROJECT": "from-google-env"}, path="").project == "from-google-env"
    env["CLOUDSDK_CORE_PROJECT"] = "from-cloudsdk"
    assert Config.load(env={**env, "GOOGLE_CLOUD_PROJECT": "from-google-env"}, path="").project == "from-cloudsdk"
    assert Config.load(env=env, path=toml).project == "from-toml"
    assert Config.load(env={**env, "OPS_HPC_PROJECT": "from-ops-env"}, path=toml).project == "from-ops-env"
    assert Config.load({"project": "from-flag"}, env={**env, "OPS_HPC_PROJECT": "x-env-x"}, path=toml).project == "from-flag"


def test_adc_project_is_the_last_resort(tmp_path, gcloud_env):
    _gcloud(Path(gcloud_env["CLOUDSDK_CONFIG"]), **{"core/account": "a@example.com"})  # no project in gcloud
    assert Config.load(env=gcloud_env, path="").project == "from-adc"
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps({"type": "service_account", "project_id": "from-key-file"}))
    assert Config.load(env={**gcloud_env, "GOOGLE_APPLICATION_CREDENTIALS": str(sa)}, path="").project == "from-key-file"


def test_zone_from_gcloud_then_cloudsdk_env(gcloud_env):
    assert Config.load(env=gcloud_env, path="").zone == "europe-west4-b"
    assert Config.load(env={**gcloud_env, "CLOUDSDK_COMPUTE_ZONE": "asia-east1-a"}, path="").zone == "asia-east1-a"
    assert Config.load({"zone": "us-east1-b"}, env=gcloud_env, path="").zone == "us-east1-b"


def test_the_active_configuration_name_can_come_from_the_environment(tmp_path, gcloud_env):
    folder = Path(gcloud_env["CLOUDSDK_CONFIG"])
    (folder / "configurations" / "config_other").write_text("[core]\nproject = other-project\n")
    env = {**gcloud_env, "CLOUDSDK_ACTIVE_CONFIG_NAME": "other"}
    assert Config.load(env=env, path="").project == "other-project"


def test_gcloud_folder_on_windows_is_appdata(monkeypatch, tmp_path):
    monkeypatch.setattr(config_mod.sys, "platform", "win32")
    _gcloud(tmp_path / "Roaming" / "gcloud", **{"core/project": "windows-project"})
    assert Config.load(env={"APPDATA": str(tmp_path / "Roaming")}, path="").project == "windows-project"


def test_local_backend_ignores_the_real_gcloud_project(gcloud_env):
    cfg = Config.load({"backend": "local"}, env=gcloud_env, path="")
    assert cfg.project == config_mod.LOCAL_PROJECT and cfg.zone == "us-central1-a"


def test_a_bad_project_in_gcloud_names_its_file(gcloud_env):
    _gcloud(Path(gcloud_env["CLOUDSDK_CONFIG"]), **{"core/project": "Bad_Project"})
    with pytest.raises(ConfigError, match="config_work"):
        Config.load(env=gcloud_env, path="")


def test_config_file_is_found_in_the_user_config_folder(tmp_path, monkeypatch):
    user = tmp_path / "user" / "ops-hpc.toml"
    user.parent.mkdir(parents=True)
    user.write_text('project = "from-user-folder"\n')
    monkeypatch.setattr(config_mod, "user_config_file", lambda: user)
    monkeypatch.chdir(tmp_path)
    assert Config.load(env={}).project == "from-user-folder"
    (tmp_path / "ops-hpc.toml").write_text('project = "from-cwd"\n')
    assert Config.load(env={}).project == "from-cwd"


def test_effective_names_every_source(tmp_path, gcloud_env):
    rows = {key: (value, source) for key, value, source in config_mod.effective(
        {"zone": "us-east1-b"}, env={**gcloud_env, "OPS_HPC_MACHINE_TYPE": "n2-standard-8"}, path="")}
    assert rows["project"] == ("from-gcloud", f"gcloud configuration {gcloud_env['CLOUDSDK_CONFIG']}/configurations/config_work")
    assert rows["zone"] == ("us-east1-b", "--zone")
    assert rows["machine_type"] == ("n2-standard-8", "environment variable OPS_HPC_MACHINE_TYPE")
    assert rows["disk_size_gb"] == (200, "default")
    assert rows["bucket (effective)"][0] == "from-gcloud-ops-hpc"
