"""Features plug into the agent at one place: a module in this package that
defines a `Feature` subclass (and, optionally, `TraceTool`s). The agent, the
exporter and the CLI find them here; nothing else needs editing to add one.

A feature owns its probes (bpf/<probe>.bpf.c ↔ probes/<probe>.py), reads them on
each agent refresh, and yields its metric families at scrape time."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client.core import Metric

from ..families import CounterFamily
from ..probes.base import Probe

if TYPE_CHECKING:
    from ..agent import Agent


class Feature:
    """Base class. Subclasses set `name`, create probes in __init__ and override
    what they need. Methods run under the agent's refresh lock."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def __init__(self, agent: Agent, options: dict[str, Any]) -> None:
        self.agent = agent
        self.options = options
        self.probes: list[Probe] = []

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Options of `meshlens run` for this feature (prefix them with the name)."""

    def start(self) -> None:
        """Load and attach the probes; register ring buffers with agent.rings."""
        for probe in self.probes:
            probe.start()

    def refresh(self) -> None:
        """Read maps (the agent drains ring buffers right after all reads)."""

    def account(self) -> None:
        """Turn what refresh() read and the drained records into totals."""

    def families(self) -> Iterator[Metric]:
        return iter(())

    def stop(self) -> None:
        for probe in self.probes:
            probe.close()


class TraceTool:
    """A `meshlens trace <name>` stream."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        pass

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        raise NotImplementedError


def _modules() -> Iterator[Any]:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


def _subclasses(base: type) -> Iterator[Any]:
    for mod in _modules():
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, base)
                and obj is not base
                and getattr(obj, "name", None)
                and obj.__module__ == mod.__name__
            ):
                yield obj


def drain(records: list[bytes]) -> list[bytes]:
    """Take what a ring buffer callback appended so far; safe against the poller
    appending meanwhile (it only appends)."""
    n = len(records)
    out = records[:n]
    del records[:n]
    return out


def features() -> list[type[Feature]]:
    return list(_subclasses(Feature))


def trace_tools() -> dict[str, type[TraceTool]]:
    return {t.name: t for t in _subclasses(TraceTool)}


def kernel_events(feature: str, doc: str, counts: Iterable[tuple[str, int]]) -> CounterFamily:
    """A feature's probe bookkeeping, one counter per event:
    meshlens_<feature>_kernel_events_total{event}."""
    fam = CounterFamily(f"meshlens_{feature}_kernel_events", doc, labels=("event",))
    for label, n in counts:
        fam.add_metric([label], n)
    return fam
