"""Sessions: `nox -s tests` (the test suite, then the peers' cache suites), `nox -s drill` (the outage drill),
`nox -s bench` (micro-benchmarks), `nox -s soak` (not in CI), `nox -s matrix` (every supported Python x Django),
`nox -s oldest` (the oldest supported release of every dependency),
`nox -s lint`, `nox -s docs`, `nox -s system` (only the Debian packages).

Each session installs what it needs, redis-server and PostgreSQL included (from
Debian's packages, when run as root on Debian); elsewhere it says what is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
EXTRAS = ".[django,channels,celery,prometheus]"
# Django releases and the oldest Python each supports.
DJANGOS = {"4.2": "3.10", "5.2": "3.10", "6.0": "3.12"}
SYSTEM_PACKAGES = ["redis-server", "redis-sentinel", "iproute2", "iptables", "postgresql"]


def _missing_system_tools() -> list[str]:
    missing = [tool for tool in ("redis-server", "redis-sentinel", "ip", "iptables")
               if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]
    # Debian puts PostgreSQL's server binaries in /usr/lib/postgresql/<version>/bin, off PATH
    # (tests/harness/postgres.py looks there too).
    if shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        missing.append("initdb (PostgreSQL)")
    return missing


def ensure_system_packages(session: nox.Session) -> None:
    """Install redis-server, PostgreSQL (and the tools for blackhole faults) from Debian's packages."""
    missing = _missing_system_tools()
    if not missing:
        return
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        why = "not running as root" if os.geteuid() != 0 else "apt-get not found (not Debian?)"
        session.error(
            f"Missing: {', '.join(missing)}; cannot install them automatically ({why}). "
            f"Install the packages {' '.join(SYSTEM_PACKAGES)} (Debian/Ubuntu: "
            f"sudo apt-get install {' '.join(SYSTEM_PACKAGES)}) and run again."
        )
    session.log(f"Installing {', '.join(SYSTEM_PACKAGES)} from Debian's packages")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run(apt, "update", "-qq", external=True, env=env)
    session.run(apt, "install", "-y", "-qq", "--no-install-recommends", *SYSTEM_PACKAGES,
                external=True, env=env)
    # The packages start system-wide servers (Redis on 6379, PostgreSQL's cluster on
    # 5432); the suite starts its own, on free ports.
    for service in ("redis-server", "redis-sentinel", "postgresql"):
        session.run("sh", "-c", f"service {service} stop >/dev/null 2>&1 || true",
                    external=True, silent=True)


@nox.session(python=False)
def system(session: nox.Session) -> None:
    """Install the Debian packages the other sessions need, and nothing else (``.ci/run``
    runs it once before starting ``tests`` and ``oldest`` side by side: two ``apt-get``
    at once would fight over dpkg's lock)."""
    ensure_system_packages(session)
    missing = _missing_system_tools()
    if missing:
        session.error(f"Still missing after the install: {', '.join(missing)}")


def install_project(session: nox.Session, *groups: str) -> None:
    deps: list[str] = []
    for group in groups:
        deps += nox.project.dependency_groups(PYPROJECT, group)
    session.install("-e", EXTRAS, *deps)


# django-redis's own test suite needs these (run by tests/peers/run.py), and pytest-xdist,
# which the test group has.
PEER_DEPS = ["pytest-mock>=3"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on this Python with the newest supported Django, then the peers' suites.

    The peers' suites are Django's and django-redis's own cache tests, run on the
    plain backend and through BreakerCache (docs/cache.md); their sdists are kept
    in .nox/tests/peers. REDIS_BREAKER_PEERS=0 skips them.
    """
    ensure_system_packages(session)
    install_project(session, "test")
    session.install(*PEER_DEPS)
    session.run("python", "-m", "pytest", *session.posargs)
    if os.environ.get("REDIS_BREAKER_PEERS", "1") != "0":
        cache_dir = Path(session.virtualenv.location) / "peers"
        session.run("python", "tests/peers/run.py", "--cache-dir", str(cache_dir))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


MATRIX = [(python, django) for python in PYTHONS for django, oldest in DJANGOS.items()
          if _version(python) >= _version(oldest)]


@nox.session
@nox.parametrize(("python", "django"), MATRIX)
def matrix(session: nox.Session, django: str) -> None:
    """The test suite for one supported Python x Django pair."""
    ensure_system_packages(session)
    install_project(session, "test")
    session.install(f"Django~={django}.0")
    session.run("python", "-m", "pytest", *session.posargs)


# The floor of every runtime dependency that pyproject.toml admits.
OLDEST = ["Django==4.2.*", "redis==5.0.*", "celery==5.3.*", "kombu==5.3.*", "channels==4.0.*",
          "channels-redis==4.0.*", "pybreaker==1.0.*", "structlog==23.1.*",
          "django-redis==5.4.*", "prometheus-client==0.17.*"]


@nox.session(python=PYTHONS[0])
def oldest(session: nox.Session) -> None:
    """The test suite on the oldest Python with the oldest supported releases of each dependency."""
    ensure_system_packages(session)
    install_project(session, "test")
    session.install(*OLDEST)
    session.run("python", "-m", "pip", "freeze", silent=False)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def drill(session: nox.Session) -> None:
    """The outage drill: a Django project under traffic while Redis is cut, side by side."""
    ensure_system_packages(session)
    install_project(session, "bench")
    session.run("python", "benchmarks/drill.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Ten minutes of flapping Redis under load; memory, threads, journal and outbox stay flat."""
    ensure_system_packages(session)
    install_project(session, "bench")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The micro-benchmarks of the engine and of each integration."""
    ensure_system_packages(session)
    install_project(session, "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy (strict)."""
    install_project(session, "lint", "test")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors."""
    install_project(session, "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("Run with nox: python3 -m pip install nox && nox -s tests")
