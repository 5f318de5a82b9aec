#!/usr/bin/env python3
"""The README's two commands: set up and run both services, and run every check.

``python3 scripts/dev.py up``
    Creates ``.venv`` (first run only), installs the project's runtime (and grpcurl,
    which the banner uses) into it, and starts the
    vault (127.0.0.1:50052) and then the LLM service (127.0.0.1:50051) on the
    embedded defaults: a SQLite database and a generated seed and service token, in
    the 0600 state directory ``.rmllm/`` (override with ``RMLLM_DATA_DIR``). It
    prints how to connect and runs until Ctrl-C, which stops both gracefully.

``python3 scripts/dev.py test [PYTEST ARGS]``
    Creates ``.venv`` with the dev tools, installs the pinned tools that are not
    Python packages (buf from the npm registry, the Node client's packages; tmux from
    the distribution when it is missing), and runs
    the whole suite with pytest: unit, service, end-to-end, and the repository
    checks (ruff, mypy, buf lint, buf breaking, stale generated code).

Only the Python standard library is used here, so it runs on a fresh clone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PY = BIN / "python"
NODE_PROJECTS = [ROOT / "tools", ROOT / "clients" / "node"]


def say(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()


# The extra each command installs: `up` the runtime and grpcurl (its banner and the
# README tour use it), never the dev tools; `test` the dev tools, which include grpcurl.
UP_EXTRA, TEST_EXTRA = "grpcurl", "dev"
# The extras each install includes: after `test`, `up` installs nothing.
INCLUDES = {UP_EXTRA: {UP_EXTRA}, TEST_EXTRA: {TEST_EXTRA, UP_EXTRA}}


def has_pip(python: Path | str) -> bool:
    """Whether ``python`` can run pip."""
    probe = [str(python), "-m", "pip", "--version"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def outer_pip_can_target() -> bool:
    """Whether this interpreter's pip can install into another environment (``--python``, pip 22.3+)."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=False
    )
    version = re.match(r"pip (\d+)\.(\d+)", probe.stdout)
    return bool(probe.returncode == 0 and version and (int(version[1]), int(version[2])) >= (22, 3))


def pip() -> list[str]:
    """The pip that installs into .venv: its own, else this interpreter's pointed at it."""
    if has_pip(PY):
        return [str(PY), "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", str(PY)]


def ensure_pip() -> None:
    """pip inside .venv (an ``up`` may have made it without): the tests build wheels with it."""
    if not has_pip(PY):
        say(f"adding pip to {VENV.relative_to(ROOT)}")
        run([str(PY), "-m", "ensurepip"], stdout=subprocess.DEVNULL)


def ensure_venv(extra: str) -> None:
    """Create .venv and install the project (editable) with ``extra`` when pyproject.toml changed.

    The environment is created without pip when this interpreter's pip can install
    into it (``pip --python``): seeding pip into a new environment is most of a cold
    ``up``'s first seconds. ``test`` adds pip to it (the tests build wheels with it).
    An install of ``dev`` also serves ``up`` (it includes grpcurl), so ``up`` after
    ``test`` installs nothing.
    """
    if not PY.exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=not outer_pip_can_target(), clear=True).create(VENV)
    if extra == TEST_EXTRA:
        ensure_pip()
    want = digest(ROOT / "pyproject.toml")
    for have, includes in INCLUDES.items():
        stamp = VENV / f".installed-{have}"
        if extra in includes and stamp.exists() and stamp.read_text() == want:
            return
    say(f"installing .[{extra}] into {VENV.relative_to(ROOT)}")
    run([*pip(), "install", "-q", "--disable-pip-version-check", "-e", f".[{extra}]"], cwd=ROOT)
    (VENV / f".installed-{extra}").write_text(want)


def ensure_node_packages() -> list[Path]:
    """Install each Node project's locked packages with ``npm ci`` when its lockfile changed.

    ``npm ci`` installs exactly what the lockfile lists (checking the integrity hashes)
    and never writes the lockfile, so a run leaves the work tree as it found it. The
    lockfiles list every platform's build of buf (``npm ci`` skips the builds for other
    platforms without fetching them); a lockfile missing some is refused by ``npm ci``
    as out of sync, and ``npm install`` would add them, changing a tracked file.

    The stamp (the lockfile's digest) lives in ``.venv`` rather than ``node_modules``:
    another ``npm ci`` of the same lockfile (the README tour, the Node client's tests)
    replaces ``node_modules`` with the same packages, and must not force a reinstall.
    Returns the projects it installed.
    """
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "[dev] npm is required (buf, the Node client): install Node.js 20+ (apt-get install nodejs npm)"
        )
    installed: list[Path] = []
    for project in NODE_PROJECTS:
        lock = project / "package-lock.json"
        if not lock.exists():
            continue
        stamp = VENV / f".installed-npm-{project.name}"
        want = digest(lock)
        if (
            stamp.exists()
            and stamp.read_text() == want
            and (project / "node_modules" / ".package-lock.json").exists()
        ):
            continue
        say(f"npm ci in {project.relative_to(ROOT)}")
        run(
            [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=project,
        )
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(want)
        installed.append(project)
    return installed


def ensure_tmux() -> None:
    """tmux, for the terminal tests of ``rmllm chat`` (tests/clients/test_cli_tmux.py).

    When it is missing and apt-get can run (as root), the distribution's package is
    installed: its version is the one the distribution pins. Otherwise those tests
    skip, saying why.
    """
    if shutil.which("tmux"):
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        say("tmux is missing and apt-get cannot install it here (root needed): the terminal tests will skip")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", "tmux"]
    say("installing tmux from the distribution (apt-get)")
    for step in ([], [apt, "update", "-q"]):  # the package lists may be missing or stale
        if step:
            subprocess.run(step, env=env, capture_output=True, check=False)
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode == 0:
            return
    say("apt-get could not install tmux: the terminal tests will skip")


def port_free(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def wait_healthy(address: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until the gRPC health service at ``address`` says SERVING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(
                f"[dev] the service at {address} exited with status {proc.returncode}; see its log above"
            )
        if port_free(address):  # not listening yet: no need to start a probe process
            time.sleep(0.1)
            continue
        probe = [str(PY), "-m", "rmllm_common.healthcheck", address, "--timeout", "2"]
        if subprocess.run(probe, capture_output=True, check=False, cwd=ROOT).returncode == 0:
            return
        time.sleep(0.2)
    sys.exit(f"[dev] the service at {address} did not become healthy in {timeout:.0f}s")


# What the services make of RMLLM_ALLOW_CUSTOM_BASE_URL and RMLLM_ALLOWED_ENDPOINT_NETWORKS,
# read by their own settings code (which also validates them).
_ENDPOINTS_PROBE = """
import os
from llm_service.netpolicy import DEFAULT_ALLOWED_ENDPOINT_NETWORKS
from llm_service.settings import LLMSettings
from vault_service.settings import VaultSettings
llm = LLMSettings.from_env(os.environ).allow_custom_base_url
vault = VaultSettings.from_env(os.environ, with_secrets=False).allow_custom_base_url
networks = os.environ.get("RMLLM_ALLOWED_ENDPOINT_NETWORKS", "").strip() or DEFAULT_ALLOWED_ENDPOINT_NETWORKS
print(int(llm), int(vault), networks)
"""
_INDENT = " " * 20
TOUR_UP = (
    "RMLLM_ALLOW_CUSTOM_BASE_URL=1 RMLLM_ALLOWED_ENDPOINT_NETWORKS=127.0.0.1:8089 python3 scripts/dev.py up"
)


def endpoint_lines(env: dict[str, str]) -> str:
    """The banner's lines on custom base URLs and private endpoints, as the services read them."""
    probe = subprocess.run(
        [str(PY), "-c", _ENDPOINTS_PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    answer = probe.stdout.strip().split(maxsplit=2)
    if probe.returncode != 0 or len(answer) != 3:
        return "  custom base URLs  unknown (could not read the settings)"
    llm, vault = (flag == "1" for flag in answer[:2])
    if llm and vault:
        custom = "allowed (RMLLM_ALLOW_CUSTOM_BASE_URL): a config's base_url may point anywhere"
    elif llm != vault:
        which = "the LLM service" if llm else "the vault"
        custom = f"allowed by {which} only: set RMLLM_ALLOW_CUSTOM_BASE_URL=1 for both"
    else:
        custom = (
            f"not allowed: only llama's base_url may be set. For the README tour's fake\n"
            f"{_INDENT}provider, start with: {TOUR_UP}"
        )
    return (
        f"  custom base URLs  {custom}\n"
        f"  private endpoints {answer[2]}  (RMLLM_ALLOWED_ENDPOINT_NETWORKS: the non-public\n"
        f"{_INDENT}addresses provider connections may reach)"
    )


def banner(args: argparse.Namespace, env: dict[str, str]) -> str:
    """What ``up`` prints once both services are healthy; the steps in it are tested."""
    data_dir = env["RMLLM_DATA_DIR"]
    return f"""
RealMultiLLM is up.
  LLM service       {args.llm_listen}   (realmultillm.llm.v1.LLMService)
  vault             {args.vault_listen}   (realmultillm.vault.v1.VaultService)
  state             {data_dir}  (seed, service token, SQLite database: back it up)
{endpoint_lines(env)}

Next, in another terminal:
  export RMLLM_DATA_DIR={data_dir}
  export RMLLM_TARGET={args.llm_listen} RMLLM_VAULT_TARGET={args.vault_listen}
  TOKEN=$(.venv/bin/rmllm-vault users create alice | tail -n 1)
  .venv/bin/grpcurl -plaintext {args.llm_listen} list
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" {args.llm_listen} \\
      realmultillm.llm.v1.LLMService/ListProviders
  RMLLM_TOKEN=$TOKEN .venv/bin/rmllm keys set openai      # then: .venv/bin/rmllm chat -p openai "Hello"

The README's tour ("Try it") continues from here. Ctrl-C stops both services."""


def up(args: argparse.Namespace) -> int:
    ensure_venv(UP_EXTRA)
    env = dict(os.environ)
    env.setdefault("RMLLM_DATA_DIR", str(ROOT / ".rmllm"))
    for address in (args.vault_listen, args.llm_listen):
        if not port_free(address):
            sys.exit(
                f"[dev] {address} is in use: stop what listens there, or pass --vault-listen/--llm-listen"
            )
    env.setdefault("RMLLM_VAULT_ADDR", args.vault_listen)
    # One process per service (not one per core): quicker to start, and the in-memory
    # rate limits are exact. RMLLM_WORKERS still overrides it.
    env.setdefault("RMLLM_WORKERS", "1")
    procs: list[subprocess.Popen[bytes]] = []

    def stop_all(*_: object) -> None:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        procs.append(
            subprocess.Popen([str(BIN / "rmllm-vault"), "serve", "--listen", args.vault_listen], env=env)
        )
        wait_healthy(args.vault_listen, procs[0])
        procs.append(
            subprocess.Popen([str(BIN / "rmllm-llm"), "serve", "--listen", args.llm_listen], env=env)
        )
        wait_healthy(args.llm_listen, procs[1])
        print(banner(args, env), flush=True)
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        say("a service exited; stopping the other")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


def ensure_redis_server() -> None:
    """The Redis fault tests start private ``redis-server``s: install it (apt) when it is missing."""
    if shutil.which("redis-server"):
        return
    apt = shutil.which("apt-get")
    if apt is None:
        say("redis-server is missing and apt-get is not available: install Redis 6+ for the Redis tests")
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    say("installing redis-server (apt-get)")
    subprocess.run([*sudo, apt, "install", "-y", "-q", "redis-server"], check=False)


PROMETHEUS_DEB = ("prometheus", "2.42.0+ds-5+deb12u1")  # Debian 12's package, as CI installs it


def ensure_prometheus() -> None:
    """Debian's ``prometheus`` server for the metrics e2e test: installed with apt-get when missing.

    Only as root on a Debian-like system (apt-get present); elsewhere the test that
    needs it says how to install it.
    """
    if shutil.which("prometheus") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    name, version = PROMETHEUS_DEB
    say(f"apt-get install {name}={version} (the metrics e2e test scrapes with it)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", f"{name}={version}"], env=env)


def work_tree_status() -> str | None:
    """``git status --porcelain`` of the checkout, or None outside a git work tree."""
    git = shutil.which("git")
    if git is None:
        return None
    result = subprocess.run(
        [git, "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout if result.returncode == 0 else None


def test(pytest_args: list[str]) -> int:
    before = work_tree_status()
    ensure_venv(TEST_EXTRA)
    ensure_node_packages()
    ensure_tmux()
    ensure_redis_server()
    ensure_prometheus()
    env = dict(os.environ)
    env["PATH"] = (
        f"{BIN}{os.pathsep}{ROOT / 'tools' / 'node_modules' / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    )
    code = subprocess.run([str(PY), "-m", "pytest", *pytest_args], cwd=ROOT, env=env, check=False).returncode
    after = work_tree_status()
    if before is not None and after != before:
        changed = sorted(set((after or "").splitlines()) ^ set(before.splitlines()))
        say("the run changed the work tree (it must leave it as it found it):")
        for line in changed:
            print(f"  {line}", flush=True)
        return code or 1
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description="Set up and run RealMultiLLM, or run its checks.")
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="install and start both services on the embedded defaults")
    up_parser.add_argument("--llm-listen", default="127.0.0.1:50051", metavar="HOST:PORT")
    up_parser.add_argument("--vault-listen", default="127.0.0.1:50052", metavar="HOST:PORT")
    commands.add_parser(
        "test",
        help="install the dev tools and run the whole test suite (extra args go to pytest)",
        usage="%(prog)s [PYTEST ARGS...]",
        description="Install the dev tools (the dev extras, buf, the Node client's packages) when they "
        "changed, run the whole test suite with pytest, and check that the run left the work tree "
        "as it found it.",
        epilog="Every other argument goes to pytest, e.g. `dev.py test -k vault -x`, "
        "`dev.py test tests/clients -q`; `dev.py test -- --help` shows pytest's own options.",
    )
    args, rest = parser.parse_known_args()
    if args.command == "up":
        if rest:
            parser.error(f"unknown arguments: {' '.join(rest)}")
        return up(args)
    return test(rest[1:] if rest[:1] == ["--"] else rest)


if __name__ == "__main__":
    sys.exit(main())
