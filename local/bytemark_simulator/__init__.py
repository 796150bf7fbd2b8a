"""A local stand-in for the Bytemark API (contract §2), with an admin API to seed data and inject faults.

In-process::

    with SimulatorServer(port=0, seed=1) as sim:
        sim.admin.seed_user(42, "tok-42")
        requests.get(f"{sim.url}/passes?per_page=50&page=1", headers={"Authorization": "Bearer tok-42"})

As a process: ``python -m bytemark_simulator --host 127.0.0.1 --port 8917 --seed 1``.

Envelope variants a client must tolerate (``ENVELOPE_STYLES``, ``AdminClient.set_envelope``): spec,
next_only, absolute_next, page_count_pages, short_page; gzip-compressed pages with
``AdminClient.set_compression``. Faults (``FAULT_KINDS``, ``FAULT_HELP``, ``AdminClient.set_fault``) range
from HTTP errors and resets to compression bombs, slow drips, huge bodies, endless paging and passes no
document store can hold (``UNSTORABLE_PASS_VARIANTS``).
"""

from .admin import AdminClient, SimulatorAdminError
from .passes import PRODUCTS, end_of_local_day
from .server import SimulatorServer
from .state import (
    ENVELOPE_STYLES,
    FAULT_HELP,
    FAULT_KINDS,
    FAULT_PARAM_DEFAULTS,
    SCHEMA_BREAK_VARIANTS,
    UNSTORABLE_PASS_VARIANTS,
)

__all__ = [
    "ENVELOPE_STYLES",
    "FAULT_HELP",
    "FAULT_KINDS",
    "FAULT_PARAM_DEFAULTS",
    "PRODUCTS",
    "SCHEMA_BREAK_VARIANTS",
    "UNSTORABLE_PASS_VARIANTS",
    "AdminClient",
    "SimulatorAdminError",
    "SimulatorServer",
    "end_of_local_day",
]
