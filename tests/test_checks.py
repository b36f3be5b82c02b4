"""System checks on REDIS_BREAKERS: one test per id, and through `manage.py check`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from redis_breaker import Breaker, BreakerConfig, _shared
from redis_breaker.checks import check_breakers, check_state_dirs


def ids(setting: Any) -> list[str]:
    with override_settings(REDIS_BREAKERS=setting):
        return [e.id for e in check_breakers()]


def messages(setting: Any) -> list[str]:
    with override_settings(REDIS_BREAKERS=setting):
        return [f"{e.msg} {e.hint}" for e in check_breakers()]


def test_valid_settings_pass() -> None:
    """A complete, sensible configuration raises nothing."""
    assert ids({"default": {"URL": "redis://127.0.0.1:6379/0", "FAILURE_THRESHOLD": 3,
                            "FAILURE_RATE": None, "SLOW_CALL_THRESHOLD": 0.2}}) == []


def test_e001_not_a_dict() -> None:
    """REDIS_BREAKERS that is not a dict is E001."""
    assert ids([("default", {})]) == ["redis_breaker.E001"]


def test_e002_entry_not_a_dict() -> None:
    """A breaker entry that is not a dict is E002, naming the breaker."""
    assert ids({"default": "redis://localhost"}) == ["redis_breaker.E002"]
    assert "REDIS_BREAKERS['default']" in messages({"default": "redis://localhost"})[0]


def test_e003_unknown_key() -> None:
    """A misspelt key is E003, naming breaker and key, and suggesting the right one."""
    assert ids({"cache": {"FAILURE_TRESHOLD": 3}}) == ["redis_breaker.E003"]
    text = messages({"cache": {"FAILURE_TRESHOLD": 3}})[0]
    assert 'REDIS_BREAKERS["cache"]["FAILURE_TRESHOLD"]' in text
    assert "Did you mean 'FAILURE_THRESHOLD'" in text


def test_e004_wrong_type() -> None:
    """A value of the wrong type is E004 and the hint says what type to use."""
    assert ids({"default": {"RESET_TIMEOUT": "1s"}}) == ["redis_breaker.E004"]
    text = messages({"default": {"RESET_TIMEOUT": "1s"}})[0]
    assert 'REDIS_BREAKERS["default"]["RESET_TIMEOUT"]' in text
    assert "Set RESET_TIMEOUT to a number of seconds" in text


def test_e005_impossible_value() -> None:
    """A value out of range, or a URL of the wrong scheme, is E005."""
    assert ids({"default": {"FAILURE_RATE": 1.5}}) == ["redis_breaker.E005"]
    assert ids({"default": {"URL": "http://user:pw@host"}}) == ["redis_breaker.E005"]
    text = messages({"default": {"URL": "http://user:pw@host"}})[0]
    assert ":pw@" not in text


def test_e006_contradiction() -> None:
    """A ceiling below the first open interval is E006."""
    assert ids({"default": {"RESET_TIMEOUT": 10, "MAX_RESET_TIMEOUT": 1}}) == ["redis_breaker.E006"]


def test_e007_unimportable_exception() -> None:
    """An exception path that cannot be imported is E007."""
    assert ids({"default": {"COUNT_EXCEPTIONS": ["nope.Missing"]}}) == ["redis_breaker.E007"]


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes in several breakers are all listed, not just the first."""
    found = ids({"a": {"FAILURE_THRESHOLD": 0, "BOGUS": 1}, "b": {"PROBE": "yes"}})
    assert sorted(found) == ["redis_breaker.E003", "redis_breaker.E004", "redis_breaker.E005"]


def test_manage_py_check_fails_on_bad_settings() -> None:
    """`manage.py check` stops with the message when a setting is wrong."""
    with override_settings(REDIS_BREAKERS={"default": {"FAILURE_THRESHOLD": -1}}), pytest.raises(
        SystemCheckError, match=r"redis_breaker\.E005"
    ):
        call_command("check")


def test_manage_py_check_passes_on_good_settings() -> None:
    """`manage.py check` is silent about a good REDIS_BREAKERS."""
    with override_settings(REDIS_BREAKERS={"default": {"URL": "redis://127.0.0.1:6379/0"}}):
        call_command("check")


# ------------------------------------------------------- HOST_SHARED, STATE_DIR
def test_host_shared_and_state_dir_types_come_from_the_table() -> None:
    """HOST_SHARED that is not a bool is E004, STATE_DIR that is not a string E004, a relative one E005."""
    assert ids({"default": {"HOST_SHARED": "yes"}}) == ["redis_breaker.E004"]
    assert "Set HOST_SHARED to True or False" in messages({"default": {"HOST_SHARED": 1}})[0]
    assert ids({"default": {"STATE_DIR": 5}}) == ["redis_breaker.E004"]
    assert ids({"default": {"STATE_DIR": "var/state"}}) == ["redis_breaker.E005"]
    assert ids({"default": {"STATE_DIR": Path("var/state")}}) == ["redis_breaker.E005"]
    text = messages({"default": {"STATE_DIR": "var/state"}})[0]
    assert 'REDIS_BREAKERS["default"]["STATE_DIR"]' in text
    assert "absolute path" in text
    assert ids({"default": {"HOST_SHARED": False, "STATE_DIR": None}}) == []


def state_dir_warnings(setting: Any) -> list[str]:
    with override_settings(REDIS_BREAKERS=setting):
        found = check_state_dirs()
    assert {m.id for m in found} <= {"redis_breaker.W003"}
    return [f"{m.msg} {m.hint}" for m in found]


def engine_shares(directory: str) -> bool:
    """Whether the engine itself uses ``directory`` (a breaker attached there is host-wide)."""
    breaker = Breaker("probe-of-dir", BreakerConfig(state_dir=directory, probe=False))
    return breaker.host_shared


def private_dir(path: Path) -> str:
    path.mkdir(mode=0o700, parents=True)
    os.chmod(path, 0o700)
    return str(path)


def test_w003_a_private_directory_or_one_that_can_be_created_passes(tmp_path: Path) -> None:
    """A 0700 directory of this user, or a missing path under a writable one, is no problem."""
    ours = private_dir(tmp_path / "ours")
    missing = str(tmp_path / "later" / "state")
    assert state_dir_warnings({"a": {"STATE_DIR": ours}, "b": {"STATE_DIR": missing}}) == []
    assert engine_shares(ours)
    assert engine_shares(missing)


def test_w003_a_directory_open_to_group_or_others(tmp_path: Path) -> None:
    """A state directory others can reach is W003, naming the key, the mode and the fix."""
    directory = private_dir(tmp_path / "open")
    os.chmod(directory, 0o755)
    assert len(state_dir_warnings({"default": {"STATE_DIR": Path(directory)}})) == 1
    found = state_dir_warnings({"default": {"STATE_DIR": directory}})
    assert len(found) == 1
    assert f'REDIS_BREAKERS["default"]["STATE_DIR"] {directory!r} has mode 755' in found[0]
    assert "private to its owner (0700)" in found[0]
    assert f"chmod 700 {directory}" in found[0]
    assert "HOST_SHARED to False" in found[0]
    assert not engine_shares(directory)


def test_w003_a_directory_of_another_user(tmp_path: Path) -> None:
    """A state directory owned by another uid is W003 (root makes one; others use /)."""
    if os.geteuid() == 0:
        directory = private_dir(tmp_path / "theirs")
        os.chown(directory, 65534, 65534)
    else:
        directory = "/"
    found = state_dir_warnings({"default": {"STATE_DIR": directory}})
    assert len(found) == 1
    assert f"not to uid {os.getuid()}" in found[0]
    assert not engine_shares(directory)


def test_w003_not_a_directory(tmp_path: Path) -> None:
    """A file, or a symbolic link to a private directory, is W003 (the engine refuses both)."""
    regular = tmp_path / "file"
    regular.write_text("")
    link = tmp_path / "link"
    link.symlink_to(private_dir(tmp_path / "target"))
    found = state_dir_warnings({"a": {"STATE_DIR": str(regular)}, "b": {"STATE_DIR": str(link)}})
    assert len(found) == 2
    assert "is not a directory" in found[0]
    assert "is a symbolic link" in found[1]
    assert not engine_shares(str(regular))
    assert not engine_shares(str(link))


def test_w003_a_path_that_cannot_be_created(tmp_path: Path) -> None:
    """HOST_SHARED with a STATE_DIR that cannot be created is W003; without HOST_SHARED nothing."""
    regular = tmp_path / "file"
    regular.write_text("")
    directory = str(regular / "state")
    found = state_dir_warnings({"default": {"STATE_DIR": directory}})
    assert len(found) == 1
    assert f"cannot be created: {regular} is not a directory" in found[0]
    assert not engine_shares(directory)
    assert state_dir_warnings({"default": {"STATE_DIR": directory, "HOST_SHARED": False}}) == []


def test_w003_the_default_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default state directory is checked too: breakers without STATE_DIR use it."""
    directory = private_dir(tmp_path / "default")
    monkeypatch.setattr(_shared, "default_state_dir", lambda: directory)
    assert state_dir_warnings({}) == []
    os.chmod(directory, 0o750)
    found = state_dir_warnings({"default": {"URL": "redis://127.0.0.1:6379/0"}})
    assert len(found) == 1
    assert f"The default state directory {directory!r}" in found[0]
    assert "has mode 750" in found[0]


def test_manage_py_check_reports_w003(tmp_path: Path) -> None:
    """`manage.py check` shows the warning; with --fail-level WARNING it stops on it."""
    directory = private_dir(tmp_path / "open")
    os.chmod(directory, 0o777)
    with override_settings(REDIS_BREAKERS={"default": {"STATE_DIR": directory}}):
        call_command("check")  # a warning does not stop the command
        with pytest.raises(SystemCheckError, match=r"redis_breaker\.W003"):
            call_command("check", fail_level="WARNING")
