"""Fixtures for the Python e2e tests (run by tests/e2e/run.sh inside `unshare -n`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import aioice.ice
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medrelay_harness import Server  # noqa: E402

# aiortc drops 127.0.0.1 from its candidates on purpose; the test namespace has nothing else.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


@pytest.fixture
def server(request):
    """A fresh medrelay server for one test, stopped afterwards."""
    name = "py_" + re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)
    srv = Server(name=name).start()
    yield srv
    srv.stop()
