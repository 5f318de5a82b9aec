#!/usr/bin/env python3
"""The README's two commands: set up and run both services, and run every check.

``python3 scripts/dev.py up``
    Creates ``.venv`` (first run only), installs the project into it, and starts the
    vault (127.0.0.1:50052) and then the LLM service (127.0.0.1:50051) on the
    embedded defaults: a SQLite database and a generated seed and service token, in
    the 0600 state directory ``.rmllm/`` (override with ``RMLLM_DATA_DIR``). It
    prints how to connect and runs until Ctrl-C, which stops both gracefully.

``python3 scripts/dev.py test [PYTEST ARGS]``
    Creates ``.venv`` with the dev tools, installs the pinned tools that are not
    Python packages (buf from the npm registry, the Node client's packages), and runs
    the whole suite with pytest: unit, service, end-to-end, and the repository
    checks (ruff, mypy, buf lint, buf breaking, stale generated code).

Only the Python standard library is used here, so it runs on a fresh clone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
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


def ensure_venv(extra: str) -> None:
    """Create .venv and install the project (editable) when pyproject.toml changed."""
    if not PY.exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    stamp = VENV / f".installed-{extra or 'base'}"
    want = digest(ROOT / "pyproject.toml")
    if stamp.exists() and stamp.read_text() == want:
        return
    spec = f".[{extra}]" if extra else "."
    say(f"installing {spec} into {VENV.relative_to(ROOT)}")
    run([str(PY), "-m", "pip", "install", "-q", "-e", spec], cwd=ROOT)
    stamp.write_text(want)


def ensure_node_packages() -> None:
    """Install each Node project's locked packages when its lockfile changed.

    ``npm install`` rather than ``npm ci``: the registry reachable here serves only
    the Linux builds of buf's per-platform optional packages, so the lockfile cannot
    list the others and ``npm ci`` refuses it as out of sync. ``npm install`` still
    installs exactly the locked versions (package.json pins them too) and checks
    their integrity hashes.
    """
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "[dev] npm is required (buf, the Node client): install Node.js 20+ (apt-get install nodejs npm)"
        )
    for project in NODE_PROJECTS:
        lock = project / "package-lock.json"
        if not lock.exists():
            continue
        stamp = project / "node_modules" / ".rmllm-installed"
        want = digest(lock)
        if stamp.exists() and stamp.read_text() == want:
            continue
        say(f"npm install (locked) in {project.relative_to(ROOT)}")
        run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=project)
        stamp.write_text(want)


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
        probe = [str(PY), "-m", "rmllm_common.healthcheck", address, "--timeout", "2"]
        if subprocess.run(probe, capture_output=True, check=False, cwd=ROOT).returncode == 0:
            return
        time.sleep(0.2)
    sys.exit(f"[dev] the service at {address} did not become healthy in {timeout:.0f}s")


def up(args: argparse.Namespace) -> int:
    ensure_venv("dev")
    env = dict(os.environ)
    env.setdefault("RMLLM_DATA_DIR", str(ROOT / ".rmllm"))
    for address in (args.vault_listen, args.llm_listen):
        if not port_free(address):
            sys.exit(
                f"[dev] {address} is in use: stop what listens there, or pass --vault-listen/--llm-listen"
            )
    env.setdefault("RMLLM_VAULT_ADDR", args.vault_listen)
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
        data_dir = env["RMLLM_DATA_DIR"]
        print(
            f"""
RealMultiLLM is up.
  LLM service  {args.llm_listen}   (realmultillm.llm.v1.LLMService)
  vault        {args.vault_listen}   (realmultillm.vault.v1.VaultService)
  state        {data_dir}  (seed, service token, SQLite database: back it up)

Next, in another terminal:
  export RMLLM_DATA_DIR={data_dir}
  TOKEN=$(.venv/bin/rmllm-vault users create alice | tail -n 1)
  .venv/bin/grpcurl -plaintext {args.llm_listen} list
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" {args.llm_listen} \\
      realmultillm.llm.v1.LLMService/ListProviders
  RMLLM_TOKEN=$TOKEN .venv/bin/rmllm keys set openai      # then: .venv/bin/rmllm chat -p openai "Hello"

Ctrl-C stops both services.""",
            flush=True,
        )
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        say("a service exited; stopping the other")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


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


def test(pytest_args: list[str]) -> int:
    ensure_venv("dev")
    ensure_node_packages()
    ensure_prometheus()
    env = dict(os.environ)
    env["PATH"] = (
        f"{BIN}{os.pathsep}{ROOT / 'tools' / 'node_modules' / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    )
    return subprocess.run([str(PY), "-m", "pytest", *pytest_args], cwd=ROOT, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description="Set up and run RealMultiLLM, or run its checks.")
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="install and start both services on the embedded defaults")
    up_parser.add_argument("--llm-listen", default="127.0.0.1:50051", metavar="HOST:PORT")
    up_parser.add_argument("--vault-listen", default="127.0.0.1:50052", metavar="HOST:PORT")
    commands.add_parser(
        "test", help="install the dev tools and run the whole test suite (extra args go to pytest)"
    )
    args, rest = parser.parse_known_args()
    if args.command == "up":
        if rest:
            parser.error(f"unknown arguments: {' '.join(rest)}")
        return up(args)
    return test(rest)


if __name__ == "__main__":
    sys.exit(main())
