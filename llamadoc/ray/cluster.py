"""Where and how wide a Ray batch runs: --ray ADDRESS, --workers N|N-M, --cpus-per-worker."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

from llamadoc.errors import UsageError

INSTALL = "pip install 'llamadoc[ray]'"
_ADDRESS = re.compile(r"(local|auto|[\w.-]+:\d+)")


@dataclass(frozen=True)
class Cluster:
    """Where and how wide a Ray batch runs.

    ``address``: ``local`` (this machine's Ray instance, started for the run when none
    is running), ``auto`` (the cluster this machine joined with `ray start`), or
    ``HOST:PORT`` (a cluster's GCS, reachable from here). Not ``ray://``: Ray Data
    does not run through the Ray Client.
    ``workers``: the model workers, a fixed number (n, n) or an autoscaling range;
    None: one per GPU on a cluster with GPUs, else one. ``cpus_per_worker``: the CPUs
    each model worker reserves (and its engine's threads, unless --threads is given)."""

    address: str = "local"
    workers: tuple[int, int] | None = None
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.address.startswith("ray://"):  # ray-project/ray#42739: its datasets need a driver in the cluster
            raise UsageError("--ray ray://...: Ray Data does not run through the Ray Client",
                             hint="run llamadoc on a cluster machine with --ray auto, or submit it there: "
                                  "ray job submit --address http://HEAD:8265 -- llamadoc ... --ray auto")
        if not _ADDRESS.fullmatch(self.address):
            raise UsageError(f"--ray {self.address!r} is not a Ray address", hint="use local, auto or HOST:PORT")
        if self.workers is not None and not 1 <= self.workers[0] <= self.workers[1]:
            raise UsageError(f"--workers {self.workers[0]}-{self.workers[1]}: need 1 <= N <= M")
        if not self.cpus_per_worker > 0:
            raise UsageError("--cpus-per-worker must be above 0", hint="fractions such as 0.5 are allowed")

    @classmethod
    def parse(cls, address: str | None, workers: str | None, cpus_per_worker: float | None) -> Cluster:
        """The CLI's --ray, --workers N|N-M and --cpus-per-worker; a usage error before any model loads."""
        if address is None:
            given = "--workers" if workers is not None else "--cpus-per-worker"
            raise UsageError(f"{given} needs --ray", hint="e.g. --ray local --workers 2")
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--ray needs Ray, which is not installed", hint=INSTALL)
        span = None
        if workers is not None:
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", workers.strip())
            if match is None:
                raise UsageError(f"--workers {workers!r} is not N or N-M", hint="e.g. --workers 4 or --workers 1-8")
            low = int(match[1])
            span = (low, int(match[2]) if match[2] else low)
        return cls(address, span, cpus_per_worker if cpus_per_worker is not None else 1.0)
