"""A local stand-in for the Bytemark API (SPEC §2) with an admin API for seeding data and injecting faults.

In-process::

    with SimulatorServer(port=0, seed=1) as sim:
        sim.admin.seed_user(42, "tok-42")
        requests.get(f"{sim.url}/passes?per_page=50&page=1", headers={"Authorization": "Bearer tok-42"})

As a process: ``python -m bytemark_simulator --host 127.0.0.1 --port 8917 --seed 1``.
"""

from .admin import AdminClient, SimulatorAdminError
from .passes import PRODUCTS, end_of_local_day
from .server import SimulatorServer
from .state import FAULT_KINDS, SCHEMA_BREAK_VARIANTS

__all__ = [
    "FAULT_KINDS",
    "PRODUCTS",
    "SCHEMA_BREAK_VARIANTS",
    "AdminClient",
    "SimulatorAdminError",
    "SimulatorServer",
    "end_of_local_day",
]
