"""Which certificates the host trusts when it joins an ``https://`` coordinator.

By default the system's store, as OpenSSL finds it (``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` replace it, as for any OpenSSL program). ``agent.ca_file``
(``--ca-file``) adds the CA certificates of one PEM file on top of that store: the way
to join a pool behind a self-signed or private-CA certificate without trusting it
machine-wide. Verification is never turned off.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from andy_host.errors import ConfigError


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """A verifying client context: the default store, plus ``ca_file`` when given."""
    context = ssl.create_default_context()
    if ca_file:
        path = Path(ca_file).expanduser()
        try:
            context.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"agent.ca_file: cannot load CA certificates from {str(path)!r}: {exc}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context

