"""The agent's configuration file: flags > CILIA_* environment > file > defaults, each
value's source, and errors that name the file and the key or field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cilia.agent.config import AgentConfig
from cilia.agent.config_file import ConfigFileError
from cilia.cli.lifecycle import _overrides


@pytest.fixture(autouse=True)
def _no_cilia_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CILIA_"):
            monkeypatch.delenv(name)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


FILE = """
pod-cidr: 10.1.0.0/16
mtu: 1400
clean-state: true
container-runtime: [containerd]
kvstore-opt: {etcd.address: "http://127.0.0.1:2379"}
"""


def test_file_values_are_read_with_the_flags_keys(tmp_path: Path) -> None:
    cfg = AgentConfig.load({"config_file": str(_file(tmp_path, FILE))})
    assert cfg.pod_cidr == "10.1.0.0/16"
    assert cfg.mtu == 1400
    assert cfg.clean_state is True
    assert cfg.container_runtime == ["containerd"]
    assert cfg.kvstore_opt == {"etcd.address": "http://127.0.0.1:2379"}
    assert cfg.config_file == tmp_path / "config.yaml"


def test_flags_beat_environment_beat_file_beat_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path, FILE)
    monkeypatch.setenv("CILIA_POD_CIDR", "10.2.0.0/16")
    monkeypatch.setenv("CILIA_MTU", "1300")
    cfg = AgentConfig.load({"config_file": str(path), "mtu": "1200"})
    assert cfg.mtu == 1200, "flag over environment and file"
    assert cfg.pod_cidr == "10.2.0.0/16", "environment over file"
    assert cfg.clean_state is True, "file over default"
    assert cfg.ct_max_entries == 262144, "default"
    settings = cfg.effective()
    assert settings["mtu"] == {"value": 1200, "source": "flag --mtu"}
    assert settings["pod-cidr"] == {"value": "10.2.0.0/16", "source": "env CILIA_POD_CIDR"}
    assert settings["clean-state"] == {"value": True, "source": f"file {path}"}
    assert settings["ct-max-entries"] == {"value": 262144, "source": "default"}
    assert settings["config-file"] == {"value": str(path), "source": "flag --config-file"}


def test_the_environment_names_the_file_and_the_flag_beats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text("mtu: 1450\n")
    monkeypatch.setenv("CILIA_CONFIG_FILE", str(env_file))
    cfg = AgentConfig.load()
    assert cfg.mtu == 1450
    assert cfg.effective()["config-file"]["source"] == "env CILIA_CONFIG_FILE"
    assert cfg.effective()["mtu"]["source"] == f"file {env_file}"
    flag_file = _file(tmp_path, "mtu: 1350\n")
    assert AgentConfig.load({"config_file": str(flag_file)}).mtu == 1350
    # `cilia down` and the harness build the configuration plainly: the file counts too.
    assert AgentConfig().mtu == 1450


def test_no_file_unless_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _file(tmp_path, "mtu: 1000\n")
    cfg = AgentConfig.load()
    assert cfg.config_file is None and cfg.mtu == 1500
    assert {s["source"] for s in cfg.effective().values()} == {"default"}


def test_a_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _file(tmp_path, "mtu: 1000\n")
    cfg = AgentConfig.load({"config_file": "config.yaml"})
    assert cfg.config_file == tmp_path / "config.yaml" and cfg.mtu == 1000


def test_an_empty_file_changes_nothing(tmp_path: Path) -> None:
    assert AgentConfig.load({"config_file": str(_file(tmp_path, ""))}).mtu == 1500


@pytest.mark.parametrize("key", ["pod-cidrr", "podCidr", "config-file", "socket-path"])
def test_an_unknown_key_names_the_file_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    path = _file(tmp_path, f"{key}: x\n")
    with pytest.raises(ConfigFileError) as err:
        AgentConfig.load({"config_file": str(path)})
    assert f"config file {path}: unknown key {key!r}" in str(err.value)
    monkeypatch.setenv("CILIA_CONFIG_FILE", str(path))
    with pytest.raises(ConfigFileError) as err:
        AgentConfig()
    assert str(path) in str(err.value) and f"unknown key {key!r}" in str(err.value)


def test_a_near_miss_gets_a_suggestion(tmp_path: Path) -> None:
    path = _file(tmp_path, "pod-cidrr: 10.1.0.0/16\n")
    with pytest.raises(ConfigFileError, match="did you mean 'pod-cidr'"):
        AgentConfig.load({"config_file": str(path)})


def test_a_bad_value_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = _file(tmp_path, "pod-cidr: 10.1.0.0/30\nmtu: lots\n")
    with pytest.raises(ValueError) as err:
        AgentConfig.load({"config_file": str(path)})
    text = str(err.value)
    assert "pod-cidr: Value error, pod range must hold at least 16 addresses" in text
    assert "mtu: Input should be a valid integer" in text
    assert text.count(f"(from file {path})") == 2


def test_a_bad_value_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path, "pod-cidr: 10.1.0.0/30\n")
    monkeypatch.setenv("CILIA_MTU", "lots")
    with pytest.raises(ValueError) as err:
        AgentConfig.load({"config_file": str(path), "pod_cidr": "10.1.0.0/24"})
    assert "mtu: Input should be a valid integer" in str(err.value)
    assert "(from env CILIA_MTU)" in str(err.value)
    assert "pod-cidr" not in str(err.value), "the flag overrode the file's bad value"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("- mtu: 1400\n", "expected a mapping"),
        ("mtu: [1400\n", "while parsing"),
        ("mtu: 1400\nmtu: 1300\n", None),  # YAML keeps the last one: not our error
        ("mtu: 1400\nmtu_x: 1\n", "unknown key 'mtu_x'"),
        ("pod-cidr: 10.1.0.0/16\npod_cidr: 10.2.0.0/16\n", "given twice"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, reason: str | None) -> None:
    path = _file(tmp_path, text)
    if reason is None:
        assert AgentConfig.load({"config_file": str(path)}).mtu == 1300
        return
    with pytest.raises(ConfigFileError) as err:
        AgentConfig.load({"config_file": str(path)})
    assert str(path) in str(err.value) and reason in str(err.value)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=f"{tmp_path}/nope.yaml: no such file"):
        AgentConfig.load({"config_file": str(tmp_path / "nope.yaml")})


def test_clean_state_comes_from_every_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert AgentConfig.load().clean_state is False
    assert AgentConfig.load(_overrides({"clean_state": True})).clean_state is True
    monkeypatch.setenv("CILIA_CLEAN_STATE", "true")
    cfg = AgentConfig.load(_overrides({"clean_state": None}))
    assert cfg.clean_state is True
    assert cfg.effective()["clean-state"]["source"] == "env CILIA_CLEAN_STATE"
    monkeypatch.delenv("CILIA_CLEAN_STATE")
    path = _file(tmp_path, "clean-state: true\n")
    assert AgentConfig.load(_overrides({"config_file": str(path)})).clean_state is True


def test_an_absent_flag_does_not_override_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, "clean-state: true\ncontainer-runtime: [containerd]\n")
    flags = {"config_file": str(path), "clean_state": None, "container_runtime": ()}
    cfg = AgentConfig.load(_overrides(flags))
    assert cfg.clean_state is True and cfg.container_runtime == ["containerd"]


def test_the_config_command_stays_light() -> None:
    """`cilia config` (and its module) must not import pydantic or the agent's config."""
    code = (
        "import sys, cilia.cli.options, cilia.cli.main\n"
        "bad = [m for m in sys.modules if m.startswith(('pydantic', 'cilia.agent'))]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_a_value_found_at_run_time_gets_its_own_source(tmp_path: Path) -> None:
    path = _file(tmp_path, "mtu: 1400\n")
    cfg = AgentConfig.load({"config_file": str(path)}).updated("kvstore", pod_cidr="10.9.0.0/24")
    assert cfg.pod_cidr == "10.9.0.0/24"
    assert cfg.effective()["pod-cidr"] == {"value": "10.9.0.0/24", "source": "kvstore"}
    assert cfg.effective()["mtu"]["source"] == f"file {path}"
