"""The coordinator behind a real nginx (Debian's package), as docs/tls.md tells an admin
to run it: TLS with a self-signed certificate made by openssl, hosts joining through
``wss://``, clients on ``https://``, and the real client address reaching the rate
limiter through ``X-Forwarded-For`` and ``trusted_proxies``.

nginx runs as a plain process (``daemon off``, every path in the test's tmp dir) with
the site file ``docs/nginx/andy-host.conf`` itself: only its ports, upstream and
certificate paths are replaced, so the documented file is the tested one.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest

from tests.harness.procs import ROOT, Proc, Processes, wait_models

SITE = ROOT / "docs" / "nginx" / "andy-host.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
OPENSSL = shutil.which("openssl")
ANON_LIMIT = 3  # anonymous chat requests per minute per client address, for this pool
MODEL = "fake-llama"

pytestmark = pytest.mark.skipif(
    NGINX is None or OPENSSL is None,
    reason="nginx and openssl are needed (scripts/setup installs them as root: apt-get install nginx openssl)",
)


@dataclass
class Proxied:
    """A coordinator with one host, behind nginx."""

    coordinator: Proc
    backend: Proc
    host: Proc
    procs: Processes
    https: str  # https://127.0.0.1:PORT
    http: str  # nginx's plain-HTTP redirect server
    cert: Path
    tmp: Path

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self, source: str = "127.0.0.1", key: str = "none", via_proxy: bool = True) -> openai.OpenAI:
        """The openai client, connecting from ``source`` (a loopback address of its own)."""
        transport = httpx.HTTPTransport(local_address=source, verify=self.tls())
        base = (self.https if via_proxy else self.coordinator.url) + "/api/andy/v1"
        http = httpx.Client(transport=transport, timeout=30)
        # openai types http_client as its own httpx fork's client and takes httpx's as well
        return openai.OpenAI(base_url=base, api_key=key, max_retries=0, http_client=cast(Any, http))


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, as docs/tls.md makes one."""
    cert, key = directory / "pool.crt", directory / "pool.key"
    subprocess.run(
        [str(OPENSSL), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=andy-host test pool", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_config(upstream: int, https_port: int, http_port: int, cert: Path, key: Path) -> str:
    """docs/nginx/andy-host.conf with this test's ports and certificate (IPv4 only)."""
    text = SITE.read_text()
    for old, new in {
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "/etc/letsencrypt/live/pool.example.org/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/pool.example.org/privkey.pem": str(key),
    }.items():
        assert old in text, f"docs/nginx/andy-host.conf no longer has {old!r}: update this test with it"
        text = text.replace(old, new)
    return "\n".join(line for line in text.splitlines() if "listen [::]" not in line) + "\n"


def main_config(tmp: Path, site: Path) -> Path:
    """A whole nginx.conf around the site file, with every path in ``tmp``."""
    temp = "\n".join(f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                          "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the tmp dir (0700) as we do
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} info;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {tmp / 'access.log'};\n{temp}\n    include {site};\n}}\n"
    )
    return conf


def wait_listening(port: int, popen: subprocess.Popen[bytes], log: Path, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"nginx exited ({popen.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nginx did not listen on {port} within {within}s")


def start_nginx(tmp: Path, upstream: int, cert: Path, key: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """nginx in the foreground on two free ports; a port taken meanwhile is drawn again."""
    for attempt in range(3):
        https_port, http_port = free_port(), free_port()
        site = tmp / "andy-host.conf"
        site.write_text(site_config(upstream, https_port, http_port, cert, key))
        log = tmp / f"nginx-{attempt}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen([str(NGINX), "-p", str(tmp), "-e", str(tmp / "error.log"),
                                      "-c", str(main_config(tmp, site)), "-g", "daemon off;"],
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_listening(https_port, popen, log)
            return popen, https_port, http_port
        except RuntimeError:
            if "in use" not in log.read_text(errors="replace") or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    tmp = tmp_path_factory.mktemp("nginx")
    cert, key = make_certificate(tmp)
    procs = Processes(tmp)
    nginx: subprocess.Popen[bytes] | None = None
    try:
        coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_TRUSTED_PROXIES": "127.0.0.1",
                                             "ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": str(ANON_LIMIT)})
        upstream = int(coordinator.url.rsplit(":", 1)[1])
        nginx, https_port, http_port = start_nginx(tmp, upstream, cert, key)
        https = f"https://127.0.0.1:{https_port}"
        backend = procs.fake("llamacpp", "--model", MODEL)
        host = procs.agent(https, "llamacpp", backend.url, "tls-host", "--ca-file", str(cert))
        wait_models(coordinator.url, {MODEL + ":latest": 1})
        yield Proxied(coordinator, backend, host, procs, https, f"http://127.0.0.1:{http_port}", cert, tmp)
    finally:
        procs.stop_all()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)


def test_host_joins_through_wss_and_api_answers_on_https(proxied: Proxied) -> None:
    status = proxied.host.wait_notice("STATUS=connected to ")  # joined, in its own words
    assert status == f"STATUS=connected to {proxied.https} as {proxied.host.host_id}", status
    connected = next(e for e in proxied.host.events() if e.get("event") == "link.connected")
    assert connected["url"] == proxied.https.replace("https://", "wss://") + "/api/andy/hosts/ws"
    with httpx.Client(verify=proxied.tls(), timeout=10) as http:
        health = http.get(proxied.https + "/health")
        assert health.status_code == 200 and health.headers["server"].startswith("nginx")
        page = http.get(proxied.https + "/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        redirect = httpx.get(proxied.http + "/api/andy/v1/models", follow_redirects=False)
        assert redirect.status_code == 301 and redirect.headers["location"].startswith("https://")
    keyed = proxied.client(key=proxied.coordinator.key)
    assert [m.id for m in keyed.models.list().data] == [MODEL + ":latest"]


def test_host_without_the_ca_is_refused_and_told_how_to_fix_it(proxied: Proxied) -> None:
    stranger = proxied.procs.agent(proxied.https, "llamacpp", proxied.backend.url, "no-ca-host", wait=False)
    reason = stranger.wait_disconnected()  # its link state, as it tells a service manager
    stranger.kill()
    assert "certificate" in reason.lower(), reason
    down = next(e for e in stranger.events() if e.get("event") == "link.down")  # logged before it said so
    assert "certificate" in down["reason"].lower()
    assert "--ca-file" in down["hint"]
    # SSL_CERT_FILE, as for every OpenSSL program, is the other way to trust it
    env_trusting = proxied.procs.agent(proxied.https, "llamacpp", proxied.backend.url, "env-ca-host",
                                       env={"SSL_CERT_FILE": str(proxied.cert)})
    env_trusting.stop()


def test_chat_through_https_arrives_whole(proxied: Proxied) -> None:
    prompt = "one two three four five six seven"
    direct, proxy = (proxied.client(key=proxied.coordinator.key, via_proxy=via) for via in (False, True))

    def answer(client: openai.OpenAI) -> str | None:
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
        return reply.choices[0].message.content

    def sending() -> int:
        """Answers the backend is still sending."""
        return int(httpx.get(proxied.backend.url + "/_stats").json()["concurrent"])

    def pieces(client: openai.OpenAI) -> tuple[list[str], int | None]:
        """The content pieces of one stream, the backend sending a token every 0.15 s, and
        how many answers the backend was still sending when the first piece arrived."""
        slow = {"mode": "slow", "count": 1, "delay": 0.15}  # a second or more of answer left at its first token
        httpx.post(proxied.backend.url + "/_fault", json=slow).raise_for_status()
        got: list[str] = []
        at_first: int | None = None
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
                if at_first is None:
                    at_first = sending()
        return got, at_first

    whole = answer(proxy)
    assert whole == answer(direct) and whole is not None and whole.endswith("heard: " + prompt)
    expected, _ = pieces(direct)
    got, at_first = pieces(proxy)
    # the same text to the character (how the coordinator groups tokens into chunks
    # follows timing, not the proxy)
    assert "".join(got) == "".join(expected) == whole and len(got) >= 3, (got, expected)
    # unbuffered: pieces left nginx as they came, not all at the end: the first one reached
    # the client while the backend was still sending the rest of the answer
    assert at_first == 1, at_first


def test_each_client_address_has_its_own_anonymous_limit(proxied: Proxied) -> None:
    def ask(client: openai.OpenAI, forged: str | None = None) -> int:
        headers = {"X-Forwarded-For": forged} if forged else None
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=2, extra_headers=headers)
            return 200
        except openai.RateLimitError as exc:
            assert int(exc.response.headers["Retry-After"]) >= 1
            return 429

    first, second, forger = proxied.client("127.0.0.2"), proxied.client("127.0.0.3"), proxied.client("127.0.0.4")
    assert [ask(first) for _ in range(ANON_LIMIT + 1)] == [200] * ANON_LIMIT + [429]
    # nginx connects from 127.0.0.1 for everyone: only the forwarded address tells them apart
    assert [ask(second) for _ in range(ANON_LIMIT + 1)] == [200] * ANON_LIMIT + [429]
    # a client naming a new address in X-Forwarded-For each time is still itself to the limiter
    forged = [ask(forger, forged=f"198.51.100.{n}") for n in range(ANON_LIMIT + 1)]
    assert forged == [200] * ANON_LIMIT + [429]
