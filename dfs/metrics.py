"""Prometheus metrics of a server process (``metrics_port`` in its config).

What it owns: the process's registry, the request histogram and error counter every
server feeds through ``timed``/``timed_inline`` (one wrapper around the handlers it
gives ``rpc.serve``, so the RPC layer stays unaware of it), gauges and counters read
from the server's own state when Prometheus scrapes, and the HTTP endpoint
(``prometheus_client``'s, in a thread of its own). What it must not do: keep state of
its own beyond counts, or touch the server's state from the HTTP thread: a scrape runs
the server's readings on its event loop (``run_coroutine_threadsafe``) and waits at most
``SCRAPE_TIMEOUT_S`` for them.

Names (docs/OPERATIONS.md lists them with their meaning): ``dfs_request_seconds{op}``
(histogram), ``dfs_request_errors_total{op,code}``, and each server's readings, named
``dfs_<what>`` with a ``_total`` suffix for counters and ``_bytes``/``_seconds`` units.
Operation labels are bounded: an op the server does not define is counted as
``other``, so a peer cannot grow the label set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dfs.wire.errors import DfsError

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 2.0
# Request latency buckets: from an inline chunk read (~100 µs) to a slow Raft commit.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])

# A reading: name -> (kind, help, value), value either a number or {labels tuple: number}
# with the label names given as ``labels``.
Reading = tuple[str, str, float | dict[tuple[str, ...], float], tuple[str, ...]]


class ServerMetrics:
    """One server process's metrics (module docstring)."""

    def __init__(self, ops: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._ops = frozenset(ops)
        self.requests = Histogram(
            "dfs_request_seconds", "Requests answered, by operation: time from arrival to answer",
            ["op"], registry=self.registry, buckets=_BUCKETS,
        )  # fmt: skip
        self.errors = Counter(
            "dfs_request_errors_total", "Requests answered with an error, by operation and code",
            ["op", "code"], registry=self.registry,
        )  # fmt: skip
        self.payload = Counter(
            "dfs_payload_bytes_total",
            "Payload bytes of requests (in) and their answers (out), by operation: a "
            "chunkserver's chunk.write in and chunk.read out are the bytes it wrote and read",
            ["op", "direction"], registry=self.registry,
        )  # fmt: skip
        self._readers: list[Callable[[], Awaitable[dict[str, Reading]]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self.registry.register(_Readings(self))

    def label(self, op: Any) -> str:
        return op if type(op) is str and op in self._ops else "other"

    def observe(
        self,
        op: Any,
        seconds: float,
        error: BaseException | None,
        payload: Any = b"",
        result: Any = None,
    ) -> None:
        label = self.label(op)
        self.requests.labels(label).observe(seconds)
        if error is not None:
            code = error.code.name if isinstance(error, DfsError) else "INTERNAL"
            self.errors.labels(label, code).inc()
        if payload:
            self.payload.labels(label, "in").inc(len(payload))
        if type(result) is tuple and len(result) == 2 and result[1]:
            self.payload.labels(label, "out").inc(len(result[1]))

    def add_reader(self, reader: Callable[[], Awaitable[dict[str, Reading]]]) -> None:
        """``reader`` returns readings of the server's state; it runs on the server's
        event loop at each scrape."""
        self._readers.append(reader)

    def start(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: a free port); returns the port."""
        self._loop = asyncio.get_running_loop()
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics event=serving address=%s:%d", host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def read_all(self) -> dict[str, Reading]:
        """Every reader's readings, taken on the server's loop (called from the HTTP
        thread); empty if the loop does not answer in time."""
        loop = self._loop
        if loop is None or loop.is_closed() or not self._readers:
            return {}

        async def gather() -> dict[str, Reading]:
            out: dict[str, Reading] = {}
            for reader in self._readers:
                out.update(await reader())
            return out

        try:
            future = asyncio.run_coroutine_threadsafe(gather(), loop)
        except RuntimeError:  # the loop is closing
            return {}
        try:
            return future.result(SCRAPE_TIMEOUT_S)
        except Exception as e:  # a busy or stopping server: this scrape lacks them
            future.cancel()  # not left to queue up behind the next scrapes
            log.info("metrics event=readings_skipped reason=%r", str(e) or type(e).__name__)
            return {}

    # --- handler wrappers -------------------------------------------------------------

    def timed(self, handler: F) -> F:
        """``handler(conn, header, payload)`` (rpc.serve's), timed per op."""

        async def timed_handler(conn: Any, header: dict[str, Any], payload: Any) -> Any:
            start = time.perf_counter()
            try:
                result = await handler(conn, header, payload)
            except Exception as e:
                self.observe(header.get("op"), time.perf_counter() - start, e)
                raise
            if "id" in header:  # a request, not a one-way frame
                self.observe(header.get("op"), time.perf_counter() - start, None, payload, result)
            return result

        return cast(F, timed_handler)

    def timed_inline(self, handler: F, later: object) -> F:
        """rpc.serve's ``inline_handler``, timed per op when it answers (not ``later``)."""

        def timed_handler(conn: Any, header: dict[str, Any], payload: Any) -> Any:
            start = time.perf_counter()
            try:
                result = handler(conn, header, payload)
            except Exception as e:
                self.observe(header.get("op"), time.perf_counter() - start, e)
                raise
            if result is not later:
                self.observe(header.get("op"), time.perf_counter() - start, None, payload, result)
            return result

        return cast(F, timed_handler)


class _Readings(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # taken at collect time only: never during registration

    def collect(self) -> Iterator[Metric]:
        for name, (kind, doc, value, labels) in sorted(self._metrics.read_all().items()):
            family_of = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_of(name, doc, labels=list(labels))
            samples = value.items() if isinstance(value, dict) else [((), value)]
            for key, v in samples:
                family.add_metric(list(key), v)
            yield family


def gauge(doc: str, value: float | dict[tuple[str, ...], float], *labels: str) -> Reading:
    return ("gauge", doc, value, labels)


def counter(doc: str, value: float | dict[tuple[str, ...], float], *labels: str) -> Reading:
    return ("counter", doc, value, labels)


__all__ = ["SCRAPE_TIMEOUT_S", "ServerMetrics", "counter", "gauge"]
