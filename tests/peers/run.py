"""Run the peers' own test suites on the plain backend and through ours.

    python tests/peers/run.py [--cache-dir DIR] [--suite NAME]
        [--json PATH]

The suites come from the sdists of the installed Django and django-redis
(``pip download --no-deps --no-binary :all:``, kept in ``--cache-dir``):
Django's ``cache/tests.py::RedisCacheTests`` and django-redis's ``tests/``
(its default settings, ``settings.sqlite``). Each suite runs twice, at the
same time, each run against a redis-server of its own: once as written, once
with every Redis cache alias swapped for a ``BreakerCache`` over it
(``swap.py``).

channels_redis's ``tests/test_core.py`` (from the sdist of the installed
channels_redis) runs the same way, with its ``RedisChannelLayer`` swapped for
``BreakerChannelLayer`` (``swap_channels.py``), and its ``tests/test_pubsub.py``
with its ``RedisPubSubChannelLayer`` swapped for ``BreakerPubSubChannelLayer``
(``swap_pubsub.py``); its Sentinel suites (``tests/test_sentinel.py``,
``tests/test_pubsub_sentinel.py``) run next to a Sentinel setup of their own,
both layers swapped (``swap_sentinel.py``).

Fails unless every test that passes on the plain backend passes through
ours or is listed, with its reason, in the suite's table (``docs/cache.md``,
*The peers' test suites*; ``docs/channels.md``, *channels_redis's test
suite*); a listed test that no longer differs fails too, so the table stays
true. Prints the counts.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))

from tests.harness import RedisSentinelCluster, RedisServer  # noqa: E402

INI = """[pytest]
addopts =
timeout = 600
"""
#: channels_redis's suite is written for pytest-asyncio's auto mode.
ASYNC_INI = INI + "asyncio_mode = auto\n"


@dataclass(frozen=True)
class Suite:
    name: str
    #: Distribution whose sdist holds the tests, and what of it to extract.
    dist: str
    members: str
    #: Where to run pytest (below the extracted sdist), its arguments, its PYTHONPATH.
    workdir: str
    args: tuple[str, ...]
    paths: tuple[str, ...]
    settings: str | None = None
    #: The pytest plugin that swaps the peer for ours, the name the docs' table
    #: gives the suite, the docs page and section that hold the table.
    plugin: str = "swap"
    label: str = ""
    doc: str = "cache.md"
    section: str = "## The peers' test suites"
    ini: str = INI
    #: Run next to a Sentinel setup (channels_redis's Sentinel suites) instead of one server.
    sentinel: bool = False


SUITES = {
    "django": Suite(
        "django", "Django", "tests/cache/", "tests",
        ("cache/tests.py::RedisCacheTests",), ("tests",), settings="django_settings",
        label="Django"),
    "django-redis": Suite(
        "django-redis", "django-redis", "tests/", ".",
        # Its default settings only (the others need sentinels, a unix socket or compressors).
        ("tests", "-k", "not sqlite_", "-p", "no:django"), (".", "tests"), label="django-redis"),
    "channels_redis": Suite(
        "channels_redis", "channels_redis", "tests/", ".",
        # test_receive_cancel is xfail upstream (a race in redis-py, channels_redis
        # #348): it passes or fails by chance on either layer.
        ("tests/test_core.py", "-p", "no:django",
         "--deselect", "tests/test_core.py::test_receive_cancel"), (), plugin="swap_channels",
        label="channels_redis", doc="channels.md", section="## channels_redis's test suite",
        ini=ASYNC_INI),
    "channels_redis_pubsub": Suite(
        "channels_redis_pubsub", "channels_redis", "tests/", ".",
        ("tests/test_pubsub.py", "-p", "no:django"), (), plugin="swap_pubsub",
        label="channels_redis pub/sub", doc="channels.md",
        section="## channels_redis's test suite", ini=ASYNC_INI),
    "channels_redis_sentinel": Suite(
        "channels_redis_sentinel", "channels_redis", "tests/", ".",
        # Its test_receive_cancel is the same upstream xfail race as test_core.py's.
        ("tests/test_sentinel.py", "tests/test_pubsub_sentinel.py", "-p", "no:django",
         "--deselect", "tests/test_sentinel.py::test_receive_cancel"), (),
        plugin="swap_sentinel", label="channels_redis Sentinel", doc="channels.md",
        section="## channels_redis's test suite", ini=ASYNC_INI, sentinel=True),
}


def fetch(dist: str, version: str, cache_dir: Path, attempt: int = 0) -> Path:
    """The sdist of ``dist==version`` in ``cache_dir``, downloaded once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wanted = f"{dist.lower().replace('-', '_')}-{version}.tar.gz"
    for found in cache_dir.glob("*.tar.gz"):
        name, _, rest = found.name.lower().partition(f"-{version}")
        if f"{name.replace('-', '_')}-{version}{rest}" == wanted:
            return found
    if attempt:
        raise RuntimeError(f"pip downloaded no {wanted} into {cache_dir}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", "--disable-pip-version-check",
                    f"{dist}=={version}", "-d", str(cache_dir)], check=True)
    return fetch(dist, version, cache_dir, attempt=1)


def extract(tarball: Path, members: str, dest: Path) -> Path:
    """The sdist's ``members`` (a folder) below ``dest``; returns the sdist's top folder."""
    top = dest / tarball.name.removesuffix(".tar.gz")
    marker = top / ".extracted"
    if marker.exists():
        return top
    with tarfile.open(tarball) as tar:
        chosen = [m for m in tar.getmembers()
                  if m.name.partition("/")[2].startswith(members) and (m.isfile() or m.isdir())]
        try:
            tar.extractall(dest, members=chosen, filter="data")
        except TypeError:  # Python without extraction filters (before 3.10.12 / 3.11.4)
            tar.extractall(dest, members=chosen)
        top = dest / chosen[0].name.partition("/")[0]
    (top / ".extracted").touch()
    return top


def run_suite(suite: Suite, top: Path, mode: str,
              work: Path) -> tuple[subprocess.Popen[bytes], Path, RedisServer | RedisSentinelCluster,
                                   Path]:
    server: RedisServer | RedisSentinelCluster
    extra: dict[str, str] = {}
    if suite.sentinel:
        # channels_redis's Sentinel suites: master group "sentinel", sentinel password
        # "channels_redis"; the sentinels' addresses are relocated by the plugin.
        server = RedisSentinelCluster("sentinel", replicas=1, sentinels=1,
                                      sentinel_password="channels_redis").start()
        extra["PEERS_SENTINELS"] = ",".join(f"{h}:{p}" for h, p in server.sentinels)
        # Some of their tests make a layer on the default host: the master, here.
        extra["PEERS_REDIS_PORT"] = str(server.master_address()[1])
    else:
        server = RedisServer()
        server.start()
        extra["PEERS_REDIS_PORT"] = str(server.port)
    report = work / f"{suite.name}-{mode}.json"
    log = work / f"{suite.name}-{mode}.log"
    ini = work / f"pytest-{suite.name}.ini"
    ini.write_text(suite.ini)
    env = {**os.environ,
           "PEERS_MODE": mode, **extra, "PEERS_REPORT": str(report),
           "PYTHONPATH": os.pathsep.join([str(HERE), *(str(top / p) for p in suite.paths)]),
           # The breakers' host-wide state files, private to this run.
           "TMPDIR": tempfile.mkdtemp(prefix=f"tmp-{suite.name}-{mode}-", dir=work)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if suite.settings:
        env["DJANGO_SETTINGS_MODULE"] = suite.settings
    command = [sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(top / suite.workdir),
               "-p", suite.plugin, "-p", "no:cacheprovider", "-q", "-rN", *suite.args]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=top / suite.workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, report, server, log


def listed_differences(suite: Suite) -> dict[tuple[str, str], str]:
    """(suite, test) -> reason, from the suite's table in its docs page."""
    found: dict[tuple[str, str], str] = {}
    section = (DOCS / suite.doc).read_text().partition(suite.section)[2].partition("\n## ")[0]
    for row in re.finditer(rf"^\| {re.escape(suite.label)} \| `([^`]+)` \| (.+?) \|$",
                           section, re.MULTILINE):
        found[(suite.name, row.group(1))] = row.group(2)
    return found


def short(nodeid: str) -> str:
    """``tests/test_backend.py::TestX::test_y[sqlite]`` -> ``test_backend.py::TestX::test_y``."""
    nodeid = re.sub(r"\[sqlite\]$", "", nodeid)
    return nodeid.removeprefix("tests/").removeprefix("cache/tests.py::")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".nox" / "peers")
    parser.add_argument("--suite", choices=sorted(SUITES), action="append")
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    args = parser.parse_args(argv)
    args.cache_dir = args.cache_dir.resolve()  # the runs change directory
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    runs = []
    for name in args.suite or sorted(SUITES):
        suite = SUITES[name]
        version = importlib.metadata.version(suite.dist)
        top = extract(fetch(suite.dist, version, args.cache_dir), suite.members,
                      args.cache_dir / "src")
        for mode in ("plain", "breaker"):
            runs.append((suite, version, mode, *run_suite(suite, top, mode, work)))
    outcomes: dict[tuple[str, str], dict[str, str]] = {}
    problems: list[str] = []
    for suite, _version, mode, proc, report, server, log in runs:
        proc.wait()
        server.close()
        if not report.exists():
            problems.append(f"{suite.name} ({mode}) reported nothing; see {log}:\n"
                            + log.read_text()[-3000:])
            continue
        outcomes[(suite.name, mode)] = {short(k): v for k, v in
                                        json.loads(report.read_text()).items()}
    summary: dict[str, dict[str, object]] = {}
    for suite, version, mode, *_ in runs:
        if mode != "plain" or (suite.name, "breaker") not in outcomes:
            continue
        listed = listed_differences(suite)
        plain = outcomes.get((suite.name, "plain"), {})
        through = outcomes[(suite.name, "breaker")]
        differ = sorted(t for t, o in plain.items() if o == "passed" and through.get(t) != "passed")
        for test in differ:
            if (suite.name, test) not in listed:
                problems.append(f"{suite.name}: {test} passes on the plain backend, "
                                f"{through.get(test, 'missing')} through ours, and is not "
                                f"listed in docs/{suite.doc}")
        for (name, test), _reason in listed.items():
            if name == suite.name and test not in differ:
                problems.append(f"{suite.name}: {test} is listed in docs/{suite.doc} but does "
                                "not differ any more: remove it from the table")
        passed = {m: sum(o == "passed" for o in outcomes[(suite.name, m)].values())
                  for m in ("plain", "breaker")}
        summary[suite.name] = {"version": version, "tests": len(plain), **passed,
                               "listed": len(differ)}
        print(f"{suite.label or suite.dist} {version}: {len(plain)} tests; passed plain {passed['plain']}, "
              f"through ours {passed['breaker']} ({len(differ)} listed in docs/{suite.doc})")
    print(f"peers' suites: {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "outcomes": {
            f"{s}:{m}": o for (s, m), o in outcomes.items()}}, indent=1, sort_keys=True))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    shutil.rmtree(work, ignore_errors=True)  # kept when something failed: its logs are named above
    return 0


if __name__ == "__main__":
    sys.exit(main())
