"""Benchmark the `lookup_order` tool through the registry, against a bare store query.

Run: .venv/bin/python tools/bench_tools.py [--n 2000] [--postgres-url URL]  (well under a minute)

What is timed is `ToolRegistry.invoke(..., "lookup_order", args, ctx, enabled=...)`: argument
validation, order-number normalisation, the store query, the verification rules and the conversion
of the result to JSON, which is everything a call pays. Calls run one at a time and are
mixed in equal shares:

* owner: called from +15550100001, which owns order 1042, said as "one oh four two";
* postcode: "1042" with the postcode "sw1a1aa", called from another number;
* refusal: "1042" with no postcode, called from another number (``verified: false``).

Each call gets a fresh `CallContext`, so no verification is remembered between calls. The
baseline is a bare `OrderStore.find("1042")`, timed by the same loop and interleaved with the
registry calls, so the ratio registry/bare holds on any machine.

Backends: a warm SQLite file in a temporary directory (prepared with `db.prepare`; warm means
measured after `WARMUP` calls of each kind), and PostgreSQL when reachable (default: the test
server at 127.0.0.1:5432, or ``PHONE_AGENT_TEST_POSTGRES_URL``), in a schema of its own that is
created for the run and dropped afterwards. calls/s is sequential throughput: calls / total time.

Target: p99 <= 10 ms for the mixed registry calls on warm SQLite. The script prints PASS or MISS
and exits 0 either way: it is a report, not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, TypeVar

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from phone_agent.db import create_engine, database_url, prepare, redacted, sessionmaker
from phone_agent.orders.store import OrderRecord, OrderStore
from phone_agent.orders.tools import register_order_tools
from phone_agent.tools import CallContext, ToolRegistry, ToolResult

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TARGET_P99_MS = 10.0
WARMUP = 300  # calls of each kind (registry and bare) before measuring
BUDGET_S = 20.0  # per backend: a slow machine measures fewer calls rather than run for minutes
ENABLED = frozenset({"lookup_order"})
OWNER = "+15550100001"
OTHER = "+15550100002"
T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    name: str
    caller: str
    args: dict[str, Any]
    verified: bool


KINDS = (
    Kind("owner", OWNER, {"order_number": "one oh four two"}, True),
    Kind("postcode", OTHER, {"order_number": "1042", "postcode": "sw1a1aa"}, True),
    Kind("refusal", OTHER, {"order_number": "1042"}, False),
)


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p90: float
    p99: float
    max: float
    per_s: float

    @classmethod
    def of(cls, ms: list[float]) -> Stats:
        q = statistics.quantiles(ms, n=100, method="inclusive")
        return cls(len(ms), q[49], q[89], q[98], max(ms), 1000 * len(ms) / sum(ms))


@dataclass
class Samples:
    registry: dict[str, list[float]]  # by kind name
    bare: list[float]


async def _timed(run: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    """How long awaiting `run()` took, in ms, and its value."""
    start = time.perf_counter_ns()
    value = await run()
    return (time.perf_counter_ns() - start) / 1e6, value


def _check(kind: Kind, result: ToolResult) -> None:
    """Fail loudly if a call took another path than the one it stands for."""
    output = result.response.get("output")
    if (
        result.status != "ok"
        or not isinstance(output, dict)
        or output.get("verified") is not kind.verified
    ):
        raise RuntimeError(f"{kind.name}: unexpected result {result.status!r} {result.response!r}")


async def _measure(store: OrderStore, n: int) -> Samples:
    registry = ToolRegistry()
    register_order_tools(registry, store)
    samples = Samples({kind.name: [] for kind in KINDS}, [])

    async def one(i: int, record: bool) -> None:
        kind = KINDS[i % len(KINDS)]
        ctx = CallContext(call_sid=f"CAbench{i:08d}", caller_number=kind.caller)

        def call() -> Awaitable[ToolResult]:
            return registry.invoke(f"call-{i}", "lookup_order", kind.args, ctx, enabled=ENABLED)

        def bare() -> Awaitable[OrderRecord | None]:
            return store.find("1042")

        # Alternate which goes first, so neither always runs right after the other.
        if i % 2:
            bare_ms, order = await _timed(bare)
            call_ms, result = await _timed(call)
        else:
            call_ms, result = await _timed(call)
            bare_ms, order = await _timed(bare)
        _check(kind, result)
        if order is None:
            raise RuntimeError("OrderStore.find('1042') found nothing: no demo data?")
        if record:
            samples.registry[kind.name].append(call_ms)
            samples.bare.append(bare_ms)

    for i in range(WARMUP):
        await one(i, record=False)
    gc.collect()
    deadline = time.monotonic() + BUDGET_S
    for i in range(n):
        if time.monotonic() > deadline:
            print(f"  (time budget of {BUDGET_S:g} s reached: {i} of {n} calls measured)")
            break
        await one(i, record=True)
    return samples


def _report(title: str, samples: Samples, *, target: bool) -> None:
    every = [ms for kind in KINDS for ms in samples.registry[kind.name]]
    mixed, bare = Stats.of(every), Stats.of(samples.bare)
    rows = [
        (f"registry: lookup_order, {k.name}", Stats.of(samples.registry[k.name])) for k in KINDS
    ]
    rows += [("registry: lookup_order, mixed", mixed), ('baseline: OrderStore.find("1042")', bare)]
    print()
    print(title)
    print(
        f"| {'measured':<36} | {'n':>5} | {'p50 ms':>7} | {'p90 ms':>7} | {'p99 ms':>7} "
        f"| {'max ms':>7} | {'calls/s':>7} |"
    )
    print(f"|{'-' * 38}|{'-' * 6}:|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|")
    for name, s in rows:
        print(
            f"| {name:<36} | {s.n:>5} | {s.p50:>7.3f} | {s.p90:>7.3f} | {s.p99:>7.3f} "
            f"| {s.max:>7.3f} | {s.per_s:>7.0f} |"
        )
    ratio = (
        f"| {'ratio mixed/baseline':<36} | {'':>5} | {mixed.p50 / bare.p50:>6.2f}× "
        f"| {mixed.p90 / bare.p90:>6.2f}× | {mixed.p99 / bare.p99:>6.2f}× "
        f"| {mixed.max / bare.max:>6.2f}× | {mixed.per_s / bare.per_s:>6.2f}× |"
    )
    print(ratio)
    if target:
        verdict = "PASS" if mixed.p99 <= TARGET_P99_MS else "MISS"
        print(
            f"Target: p99 <= {TARGET_P99_MS:g} ms (mixed registry calls, warm SQLite): "
            f"{verdict} ({mixed.p99:.3f} ms)"
        )


async def bench_sqlite(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_tools_") as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp}/orders.db")
        try:
            await prepare(engine)
            samples = await _measure(OrderStore(sessionmaker(engine)), n)
        finally:
            await engine.dispose()
    _report("SQLite (temporary file, warm)", samples, target=True)


async def _probe(url: str) -> None:
    engine = create_engine(url, connect_args={"timeout": 3})
    try:
        with anyio.fail_after(5):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


@asynccontextmanager
async def _throwaway_schema(url: str) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """An engine whose search_path is a new schema, dropped (with everything in it) on exit."""
    schema = f"bench_tools_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            engine = create_engine(url, connect_args={"server_settings": {"search_path": schema}})
            try:
                yield schema, engine
            finally:
                await engine.dispose()
        finally:
            with anyio.CancelScope(shield=True):
                async with admin.begin() as conn:
                    await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await admin.dispose()


async def bench_postgres(url: str, n: int) -> None:
    try:
        await _probe(url)
    except Exception as exc:
        print()
        print(f"PostgreSQL not reachable at {redacted(url)}: skipped ({exc!r})")
        return
    async with _throwaway_schema(url) as (schema, engine):
        async with engine.connect() as conn:
            server = await conn.scalar(text("SHOW server_version"))
        await prepare(engine, demo_data=True)
        samples = await _measure(OrderStore(sessionmaker(engine)), n)
    title = f"PostgreSQL {server} at {redacted(url)} (schema {schema}, dropped), warm"
    _report(title, samples, target=False)


async def run(n: int, postgres_url: str) -> None:
    await bench_sqlite(n)
    await bench_postgres(postgres_url, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="measured calls per backend")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("PHONE_AGENT_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="PostgreSQL to measure in a throwaway schema (default: %(default)s)",
    )
    options = parser.parse_args()
    if options.n < 3 * len(KINDS):
        parser.error(f"--n must be at least {3 * len(KINDS)}")
    try:
        postgres_url = database_url(options.postgres_url)
    except ValueError as exc:
        parser.error(f"--postgres-url: {str(exc).partition(': ')[2]}")
    started = time.monotonic()
    print(
        f"Python {sys.version.split()[0]}, SQLAlchemy {version('sqlalchemy')}, "
        f"aiosqlite {version('aiosqlite')} (SQLite {sqlite3.sqlite_version}), "
        f"asyncpg {version('asyncpg')}"
    )
    print(
        f"lookup_order via ToolRegistry.invoke: {options.n} calls per backend after {WARMUP} "
        f"warm-up calls, one at a time, mixed {' / '.join(k.name for k in KINDS)} in equal shares; "
        'baseline OrderStore.find("1042") interleaved with them'
    )
    anyio.run(run, options.n, postgres_url)
    print()
    print(f"Total run time: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
