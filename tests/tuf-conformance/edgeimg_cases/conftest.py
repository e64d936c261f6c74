# The upstream suite's fixtures (client under test, simulated repository server).
from tuf_conformance.conftest import client, server  # noqa: F401
