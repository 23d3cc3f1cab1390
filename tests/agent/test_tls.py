"""``agent.ca_file`` / ``--ca-file``: a CA file that cannot be used stops ``join`` at once
with one line naming the option (exit 2), before any connection is tried. Joining
through TLS with a good one is in tests/system/test_nginx.py, behind a real nginx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from andy_host.agent.tls import client_context
from andy_host.errors import ConfigError
from tests.harness.procs import ROOT


def join(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "andy_host.cli", "join", "--coordinator", "https://127.0.0.1:9",
         "--backend", "llamacpp", "--backend-url", "http://127.0.0.1:9", "--state-dir", str(tmp),
         "--log-format", "json", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "not-pem"])
def test_join_refuses_an_unusable_ca_file_in_one_line(tmp_path: Path, content: str | None) -> None:
    ca = tmp_path / "pool.crt"
    if content is not None:
        ca.write_text(content)
    done = join(tmp_path, "--ca-file", str(ca))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("andy-host: agent.ca_file:") and str(ca) in lines[0]


def test_the_environment_names_it_too(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "andy_host.cli", "join", "--coordinator", "https://127.0.0.1:9",
         "--backend", "llamacpp", "--state-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "ANDY_HOST_AGENT_CA_FILE": str(tmp_path / "absent.pem"),
             "HOME": str(tmp_path)},
    )
    assert done.returncode == 2 and "agent.ca_file" in done.stderr


def test_client_context_verifies_and_adds_to_the_system_store() -> None:
    context = client_context()
    assert context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"
    with pytest.raises(ConfigError, match=r"agent\.ca_file"):
        client_context("/nonexistent/ca.pem")

