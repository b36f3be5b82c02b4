"""A newcomer's first hour, as docs/quickstart.md tells it, on a real Redis.

A fresh virtual environment gets redis-breaker installed from this checkout
(``pip install --no-deps --no-build-isolation``; its dependencies come from
the test environment through a ``.pth`` line, to stay fast and offline), a
project made by ``django-admin startproject`` gets the quickstart's own code
blocks, then ``migrate``, ``check`` and ``runserver``. Its page is loaded while
Redis runs, while it is stopped (the events say the breaker opened and
``manage.py redis_breaker status`` says open), and after it is started again
(the INFO events the quickstart's ``LOGGING`` shows say closed; so does the
status; the outbox is published).

The project's processes do not inherit tests/conftest.py's state directory:
its settings get a ``STATE_DIR`` of the test's own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RedisServer, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "docs" / "quickstart.md").read_text()
DOC_REDIS = "127.0.0.1:6379"

pytestmark = pytest.mark.timeout(600)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block of ``text``."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def project_files() -> dict[str, str]:
    """The quickstart's Python blocks that name their file on their first line (``# mysite/x.py``)."""
    files = {}
    for language, body in code_blocks(QUICKSTART):
        first = body.splitlines()[0] if body else ""
        if language == "python" and re.fullmatch(r"# mysite/\w+\.py", first):
            files[first[2:]] = body
    return files


def shell_commands() -> list[str]:
    """Every command of the quickstart's ``sh`` blocks, comments dropped."""
    return [line.split("#")[0].strip() for language, body in code_blocks(QUICKSTART)
            if language == "sh" for line in body.splitlines() if line.split("#")[0].strip()]


def _old_kombu(newcomer: Newcomer) -> bool:
    """Whether the newcomer's environment has a kombu before 5.4 (W031)."""
    version = newcomer.run("-c", "import kombu; print(kombu.__version__)").strip()
    return tuple(int(n) for n in version.split(".")[:2]) < (5, 4)


class Newcomer:
    """The fresh environment and the project, and the commands run in it."""

    def __init__(self, tmp_path: Path, server: RedisServer) -> None:
        self.tmp_path = tmp_path
        self.venv = tmp_path / "venv"
        self.python = self.venv / "bin" / "python"
        self.site = tmp_path / "mysite"
        self.server = server
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 180,
            stdout_only: bool = False) -> str:
        done = subprocess.run([str(self.python), *args], cwd=cwd or self.site, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout if stdout_only else done.stdout + done.stderr

    def manage(self, *args: str, stdout_only: bool = False) -> str:
        return self.run("manage.py", *args, stdout_only=stdout_only)

    def install(self) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)],
                       check=True, timeout=120)
        purelib = self.run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                           cwd=self.tmp_path).strip()
        # the test environment's packages (Django, Celery, Channels, pip, hatchling ...)
        # after the new environment's own
        Path(purelib, "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # as the quickstart's `pip install "./redis-breaker[...]"`, the extras already here
        self.run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--quiet", str(ROOT), cwd=self.tmp_path, timeout=300)
        where = self.run("-c", "import sys, redis_breaker; print(sys.prefix); "
                               "print(redis_breaker.__file__)", cwd=self.tmp_path).split()
        assert where[0] == str(self.venv)
        assert where[1] == str(Path(purelib, "redis_breaker", "__init__.py"))

    def create_project(self, state_dir: Path) -> None:
        assert "django-admin startproject mysite" in shell_commands()
        self.run("-m", "django", "startproject", "mysite", cwd=self.tmp_path)
        files = project_files()
        assert set(files) == {"mysite/settings.py", "mysite/celery.py", "mysite/__init__.py",
                              "mysite/views.py", "mysite/urls.py"}
        here = f"{self.server.host}:{self.server.port}"
        for name, body in files.items():
            body = body.replace(DOC_REDIS, here)
            path = self.site / name
            if name.endswith("settings.py"):
                body = path.read_text() + "\n" + body
            path.write_text(body)
        # not in the quickstart: this test's own host-wide state directory
        with (self.site / "mysite" / "settings.py").open("a") as settings:
            settings.write(f"\nREDIS_BREAKERS['default']['STATE_DIR'] = {str(state_dir)!r}\n")

    def status(self) -> dict[str, Any]:
        """``redis_breaker status``: the table's row for 'default', and --json's dict."""
        table = self.manage("redis_breaker", "status")
        header, row = (line for line in table.splitlines()
                       if line.startswith(("breaker ", "default ")))
        columns = re.split(r"\s{2,}", header.strip())
        cells = dict(zip(columns, re.split(r"\s{2,}", row.strip()), strict=False))
        # --json's output is stdout's (system check warnings, if any, go to stderr).
        return {"row": cells, "json": json.loads(
            self.manage("redis_breaker", "status", "--json", stdout_only=True))}


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def test_the_quickstart_from_a_fresh_environment_through_an_outage(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Install, startproject, the three integrations, migrate, check, traffic, Redis stopped and back."""
    newcomer = Newcomer(tmp_path, redis_server)
    newcomer.install()
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    newcomer.create_project(state_dir)

    commands = shell_commands()
    for command in ("python manage.py migrate", "python manage.py check",
                    "python manage.py runserver", "python manage.py redis_breaker status"):
        assert command in commands, f"{command!r} is not in the quickstart"
    assert "Applying redis_breaker.0001_initial... OK" in newcomer.manage("migrate")
    checked = newcomer.manage("check")
    if _old_kombu(newcomer):
        # The one warning a Redis broker on kombu before 5.4 gets (nox -s oldest).
        assert "redis_breaker.W031" in checked, checked
        assert "1 issue (0 silenced)" in checked, checked
    else:
        assert "System check identified no issues" in checked, checked

    port = free_port()
    log = (tmp_path / "runserver.log").open("w+")
    server = subprocess.Popen([str(newcomer.python), "manage.py", "runserver", "--noreload",
                               f"127.0.0.1:{port}"], cwd=newcomer.site, env=newcomer.env,
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"

    def logged() -> str:
        return (tmp_path / "runserver.log").read_text()

    def serves() -> bool:
        try:
            get(url)
        except OSError:
            return False
        return True

    try:
        assert wait_until(serves, 120, 0.2), logged()
        first = get(url)["visits"]
        assert get(url)["visits"] == first + 1

        redis_server.stop()
        # Every page load still answers; the events say the breaker opened.
        assert wait_until(lambda: get(url) is not None and "to_state=open" in logged(), 120, 0.1), \
            logged()
        assert "breaker_state_changed" in logged()
        get(url)
        down = newcomer.status()
        assert down["row"]["state"] == "open", down
        assert "closed->open" in down["row"]["last transition"], down
        assert down["json"]["outbox"]["pending"] >= 1, down["json"]

        redis_server.start()
        # INFO events, shown by the quickstart's LOGGING: half-open, then closed.
        assert wait_until(lambda: "to_state=closed" in logged(), 120, 0.2), logged()
        assert "to_state=half_open" in logged()
        assert get(url)["visits"] >= 1
        assert newcomer.status()["row"]["state"] == "closed"
        # the outbox went to the broker once Redis answered
        assert wait_until(lambda: newcomer.status()["json"]["outbox"]["pending"] == 0, 120, 1.0)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
