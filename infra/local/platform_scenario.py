"""The platform scenario: simulated days on the production-shaped stack, with faults, and one JSON.

    infra/local/platform.sh scenario --days N --out FILE [--no-faults] [--keep-state]

A fresh stack (``platform.sh up`` in its own state folder) runs a synthetic catalogue whose items keep
arriving every hour over ``history_days`` + N days ending at the last UTC midnight (all in the past:
time is simulated by the runs' windows, so a day takes minutes, not a day). The daily DAG runs through
``airflow backfill create`` one day at a time (the first run bootstraps the first snapshot; the last
day's data ends one day before the scenario's end, so the last day's items are served only through
deltas), the hourly DAG through the scheduler (unpaused: its schedule, catch-up up to
``MFLI_SCHEDULE_END`` and the snapshot asset). ``mfli serve`` (serving identity) answers a fixed-rate
loopback load the whole time. Faults (``--faults``, default on): a Celery worker SIGKILLed while it
trains, the S3 server killed while a snapshot is being published (restarted after a few seconds), one
hour of bad data (every item of that hour arrives without categories: the window's Great Expectations
suite fails the hourly run; the driver repairs the data and clears the run), a scheduler restart.
The stack is always stopped at the end (``platform.sh down``), also on errors and Ctrl-C.

``lost_items``: an item created in ``[D0, end)`` is *served* when the live service, asked
``{"recent_items": [item], "mode": "trigger", "k": 20}``, answers 200 in trigger mode from the live
snapshot with at least one item (trigger mode ignores ids the live index and its applied deltas do not
hold, so an item answers only when the service can route from its own content embedding and code
paths; the mode is named because ``auto`` means blend mode on snapshots that serve it); every other
item of the window is lost. The exit status is 1 when a target is missed (see
:func:`targets_missed`).

Pure pieces (plan, lost items, fault bookkeeping, report) are importable without the stack;
tests/infra/test_platform_scenario.py covers them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "local" / "platform.sh"
DAILY, HOURLY = "mfli_daily_retrain", "mfli_hourly_delta"


# ------------------------------------------------------------------------------------------------
# plan (pure)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The simulated calendar. ``end`` is a UTC midnight in the past; the scenario window is
    ``[d0, end)`` with ``d0 = end - days``; data starts ``history_days`` before ``d0``."""

    end: datetime
    days: int
    history_days: int
    delta_hours: int = 1  # width of the delta DAG's scheduled windows (MFLI_DELTA_SCHEDULE)

    @property
    def d0(self) -> datetime:
        return self.end - timedelta(days=self.days)

    @property
    def data_start(self) -> datetime:
        return self.d0 - timedelta(days=self.history_days)

    @property
    def daily_dates(self) -> list[datetime]:
        """Logical dates (= data ends) of the daily runs: d0 .. end - 1 day. The last day's items are
        in no snapshot: only deltas serve them."""
        return [self.d0 + timedelta(days=k) for k in range(self.days)]

    @property
    def hours(self) -> list[datetime]:
        """Starts of the delta windows the scheduler catches up: d0 .. end - delta_hours."""
        return [self.d0 + timedelta(hours=h) for h in range(0, 24 * self.days, self.delta_hours)]

    @property
    def schedule_end(self) -> datetime:
        """``MFLI_SCHEDULE_END``: the logical date of the last scheduled run (the last window)."""
        return self.end - timedelta(hours=self.delta_hours)

    @property
    def delta_cron(self) -> str:
        return "0 * * * *" if self.delta_hours == 1 else f"0 */{self.delta_hours} * * *"

    def bad_hour(self) -> datetime:
        """The hour whose items arrive broken: mid-morning of the last day (after its daily run)."""
        return self.end - timedelta(hours=17)


def plan_for(now: datetime, days: int, history_days: int = 2, delta_hours: int = 1) -> Plan:
    """The scenario ending at the last UTC midnight before ``now``."""
    if days < 1 or history_days < 1:
        raise ValueError(f"days and history_days must be >= 1, got {days}, {history_days}")
    if delta_hours not in (1, 2, 3, 4, 6, 8, 12):
        raise ValueError(f"delta_hours must divide a day (1, 2, 3, 4, 6, 8, 12), got {delta_hours}")
    end = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Plan(end, days, history_days, delta_hours)


# ------------------------------------------------------------------------------------------------
# lost items (pure)
# ------------------------------------------------------------------------------------------------
def item_served(answer: dict | None, latest: str) -> bool:
    """The definition of *served* (module docstring): a 200 answer (``answer`` is its JSON body, None
    for an error) in trigger mode, from the live snapshot ``latest``, with at least one item."""
    return bool(answer) and answer.get("mode") == "trigger" and answer.get("snapshot_id") == latest \
        and len(answer.get("items") or []) > 0


def lost_items(window_items: list[int], answers: dict[int, dict | None], latest: str) -> list[int]:
    """Items of the window that the live service does not serve (sorted ids)."""
    return sorted(int(i) for i in window_items if not item_served(answers.get(int(i)), latest))


def latest_monotonic(history: list[str]) -> bool:
    """LATEST as observed over time never moved back: snapshot ids start with their window end
    (``YYYYmmddTHHMM-``), so each observed id's prefix is >= the previous one's."""
    ends = [h.split("-")[0] for h in history if h]
    return all(a <= b for a, b in itertools.pairwise(ends))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return float(s[k])


# ------------------------------------------------------------------------------------------------
# faults (pure bookkeeping)
# ------------------------------------------------------------------------------------------------
@dataclass
class Fault:
    """One injected fault. Failed task tries are attributed to it when they match its DAG, run and task
    (None = any) and end inside ``[injected_at, (recovered_at or now) + grace_s]``; among several such
    faults the most specific (task, run, DAG named), then not a scheduler restart, then the most recent wins."""

    kind: str  # worker_kill | s3_outage | bad_data | scheduler_restart
    detail: str
    injected_at: float  # unix seconds
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None  # a fault that breaks one task (the killed worker's training)
    run_ids: list[str] | None = None  # the runs it broke, when known (the bad data's windows)
    recovered_at: float | None = None
    recovery: str = ""
    grace_s: float = 180.0
    hit: bool = True  # False: the fault found nothing to break (e.g. the task ended first)

    def covers(self, dag_id: str, end_ts: float, now: float, run_id: str | None = None,
               task_id: str | None = None) -> bool:
        for mine, theirs in ((self.dag_id, dag_id), (self.run_id, run_id), (self.task_id, task_id)):
            if mine is not None and theirs is not None and mine != theirs:
                return False
        if self.run_ids is not None and run_id is not None and run_id not in self.run_ids:
            return False
        until = (self.recovered_at if self.recovered_at is not None else now) + self.grace_s
        return self.injected_at - 1.0 <= end_ts <= until


@dataclass
class FaultLog:
    faults: list[Fault] = field(default_factory=list)

    def inject(self, kind: str, detail: str, **kw: Any) -> Fault:
        f = Fault(kind, detail, time.time(), **kw)
        self.faults.append(f)
        log(f"FAULT {kind}: {detail}")
        return f

    def recovered(self, fault: Fault, how: str) -> None:
        fault.recovered_at = time.time()
        fault.recovery = how
        log(f"RECOVERED {fault.kind} after {fault.recovered_at - fault.injected_at:.1f}s: {how}")

    def outages(self) -> list[tuple[float, float]]:
        """Windows of the S3 outages (errors of the load inside them are expected), with 20 s after."""
        return [(f.injected_at, (f.recovered_at or time.time()) + 20.0) for f in self.faults if f.kind == "s3_outage"]

    def attribute(self, failed: list[dict], final_state: dict[tuple, str], now: float) -> list[dict]:
        """``failed``: failed tries ``{dag_id, run_id, task_id, map_index, try_number, end_ts}``;
        ``final_state``: (dag_id, run_id, task_id, map_index) -> the task instance's state at the end.
        Each try gets ``injected`` (the kind of the fault that covers it, or None) and ``recovered``
        (the task instance ended in success)."""
        out = []
        for t in failed:
            # fault windows overlap (a retry delay outlasts the next fault): the most specific, then one
            # that breaks tasks (a scheduler restart only delays them), then the most recent is the cause
            fault = max((f for f in self.faults if f.hit and f.covers(t["dag_id"], t["end_ts"], now, t["run_id"],
                                                                         t["task_id"])),
                        key=lambda f: (sum(x is not None for x in (f.task_id, f.run_id or f.run_ids, f.dag_id)),
                                       f.kind != "scheduler_restart", f.injected_at),
                        default=None)
            key = (t["dag_id"], t["run_id"], t["task_id"], t.get("map_index", -1))
            out.append({**t, "injected": fault.kind if fault else None,
                        "final_state": final_state.get(key), "recovered": final_state.get(key) == "success"})
        return out

    def as_list(self) -> list[dict]:
        return [asdict(f) for f in self.faults]


# ------------------------------------------------------------------------------------------------
# report (pure)
# ------------------------------------------------------------------------------------------------
def request_summary(samples: list[tuple[float, float, int]], outages: list[tuple[float, float]]) -> dict:
    """``samples``: (unix time, latency ms, HTTP status; 0 = no answer). Errors = status != 200."""
    lat = [ms for _, ms, st in samples if st == 200]
    errors = [(t, st) for t, _, st in samples if st != 200]
    outside = [e for e in errors if not any(a <= e[0] <= b for a, b in outages)]
    return {"requests": len(samples), "request_errors": len(errors),
            "request_errors_outside_outage": len(outside),
            "error_statuses": sorted({st for _, st in errors}),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else None}


def serve_log_errors(path: Path, limit: int = 80) -> list[str]:
    """The last ``limit`` lines of the service log that report an error or a warning, or belong to a
    traceback."""
    if not path.exists():
        return []
    keep, in_tb = [], False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            in_tb = True
        elif in_tb and line and not line.startswith((" ", "\t")):
            keep.append(line)
            in_tb = False
            continue
        if in_tb or "ERROR" in line or "WARNING" in line:
            keep.append(line)
    return keep[-limit:]


def targets_missed(report: dict) -> list[str]:
    """The targets of the scenario that the report misses (empty = all met)."""
    miss = []
    if report.get("lost_items") != 0:
        miss.append(f"lost_items = {report.get('lost_items')} (target 0)")
    if not report.get("latest_monotonic"):
        miss.append("LATEST moved back in time")
    if not report.get("served_equals_gated"):
        miss.append("the service's answers differ from the gated retriever's")
    if not report.get("every_snapshot_verifies"):
        miss.append("a published snapshot fails verification")
    if not report.get("snapshots_published"):
        miss.append("no snapshot published")
    bad = [t for t in report.get("failed_tasks", []) if not t.get("injected") or not t.get("recovered")]
    if bad:
        miss.append(f"{len(bad)} task failures not injected or not recovered: "
                    + ", ".join(f"{t['dag_id']}/{t['run_id']}/{t['task_id']}" for t in bad[:5]))
    if report.get("request_errors_outside_outage"):
        miss.append(f"{report['request_errors_outside_outage']} request errors outside the S3 outage")
    if not report.get("requests"):
        miss.append("no request was answered")
    unfinished = report.get("unfinished_runs")
    if unfinished:
        miss.append(f"{len(unfinished)} runs did not finish in success: {unfinished[:5]}")
    return miss


# ------------------------------------------------------------------------------------------------
# the stack
# ------------------------------------------------------------------------------------------------
T0 = time.time()


def log(msg: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} scenario +{time.time() - T0:6.0f}s: {msg}", file=sys.stderr, flush=True)


class Stack:
    """``platform.sh`` in one state folder, plus the Airflow DB (psycopg2) and the store."""

    def __init__(self, home: Path, port_base: int, extra_env: dict[str, str]):
        self.home = home
        self.port_base = port_base
        self.base_env = {**os.environ, "MFLI_PLATFORM_HOME": str(home), "MFLI_PLATFORM_PORT_BASE": str(port_base),
                         **extra_env}
        self.env: dict[str, str] = {}
        self._db = None

    def sh(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        """``platform.sh ARGS``; its progress lines go to this process's stderr."""
        p = subprocess.run(["bash", str(SCRIPT), *args], env=self.base_env, text=True, stdout=sys.stderr,
                           timeout=timeout, check=False)
        if check and p.returncode != 0:
            raise RuntimeError(f"platform.sh {' '.join(args)} failed ({p.returncode}); see {self.home / 'logs'}")
        return p

    def up(self) -> None:
        log(f"platform.sh up (state {self.home})")
        self.sh("up", timeout=1200)
        env = {}
        for line in (self.home / "env.sh").read_text().splitlines():
            if line.startswith("export "):
                k, _, v = line[len("export "):].partition("=")
                env[k] = shlex.split(v)[0] if v else ""
        self.env = env
        os.environ.update(env)  # this process acts as the publisher (store reads) like the CLIs

    def down(self) -> None:
        log("platform.sh down")
        with contextlib.suppress(Exception):
            if self._db is not None:
                self._db.close()
        self.sh("down", timeout=600, check=False)

    def restart(self, name: str) -> None:
        self.sh("restart", name, timeout=600)

    def pid(self, name: str) -> int | None:
        p = self.home / "pids" / f"{name}.pid"
        return int(p.read_text()) if p.exists() else None

    def airflow(self, *args: str, timeout: float = 300) -> str:
        p = subprocess.run([str(ROOT / ".venv" / "bin" / "airflow"), *args], env={**self.base_env, **self.env},
                           text=True, capture_output=True, timeout=timeout, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return p.stdout

    def sql(self, query: str, args: tuple = ()) -> list[tuple]:
        import psycopg2

        if self._db is None or self._db.closed:
            self._db = psycopg2.connect(host="127.0.0.1", port=self.port_base + 432, user="airflow",
                                        password=self.env["MFLI_PG_PASSWORD"], dbname="airflow")
            self._db.autocommit = True
        with self._db.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.port_base + 1}"

    def store(self):
        from mfli.store import open_store

        return open_store(self.env["MFLI_STORE_URI"])


# ------------------------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------------------------
class Load(threading.Thread):
    """Fixed-rate loopback requests (trigger mode on catalogue items, user mode with features), one at a
    time; every request is recorded as (time, latency ms, status)."""

    def __init__(self, url: str, items: list[int], users: list[int], rps: float, seed: int = 0):
        super().__init__(daemon=True, name="load")
        import random

        self.url, self.items, self.users, self.period = url, items, users, 1.0 / rps
        self.rng = random.Random(seed)
        self.samples: list[tuple[float, float, int]] = []
        self.errors: list[dict] = []  # the first 50 non-200 answers, for the report
        self.stop_event = threading.Event()
        self.snapshots: list[str] = []

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=10.0) as client:
            nxt = time.monotonic()
            while not self.stop_event.is_set():
                if self.rng.random() < 0.5:
                    body = {"recent_items": self.rng.sample(self.items, 3), "k": 50}
                else:
                    body = {"user_id": self.rng.choice(self.users),
                            "user_features": {"history_item_ids": self.rng.sample(self.items, 5)}, "k": 50,
                            "mode": "user"}
                t = time.time()
                t0 = time.perf_counter()
                detail = ""
                try:
                    r = client.post(f"{self.url}/retrieve", json=body)
                    status = r.status_code
                    if status == 200:
                        sid = r.json().get("snapshot_id")
                        if not self.snapshots or self.snapshots[-1] != sid:
                            self.snapshots.append(sid)
                    else:
                        detail = r.text[:300]
                except httpx.HTTPError as exc:
                    status, detail = 0, f"{type(exc).__name__}: {exc}"[:300]
                ms = (time.perf_counter() - t0) * 1e3
                self.samples.append((t, ms, status))
                if status != 200 and len(self.errors) < 50:
                    self.errors.append({"at": t, "ms": round(ms, 1), "status": status, "detail": detail,
                                        "request": body})
                nxt += self.period
                self.stop_event.wait(max(0.0, nxt - time.monotonic()))


class LatestWatch(threading.Thread):
    """LATEST as seen in the store every 2 s (for ``latest_monotonic``)."""

    def __init__(self, store):
        super().__init__(daemon=True, name="latest")
        self.store, self.history, self.stop_event = store, [], threading.Event()

    def run(self) -> None:
        from mfli.store import read_latest

        while not self.stop_event.is_set():
            with contextlib.suppress(Exception):  # the S3 outage
                p = read_latest(self.store)
                if p is not None and (not self.history or self.history[-1] != p.snapshot_id):
                    self.history.append(p.snapshot_id)
            self.stop_event.wait(2.0)


# ------------------------------------------------------------------------------------------------
# the scenario
# ------------------------------------------------------------------------------------------------
@dataclass
class ScenarioConfig:
    days: int = 1  # simulated days after the bootstrap snapshot's data end
    history_days: int = 2  # data before the first day (the bootstrap snapshot trains on it)
    n_items: int = 3000  # catalogue size over the whole span (items arrive every hour)
    n_users: int = 1000
    n_interactions: int = 30_000  # sized so one daily training run takes well under a minute on 2 cores
    epochs: int = 2
    seed: int = 0
    faults: bool = True
    rps: float = 4.0  # load: requests per second, one at a time
    port_base: int = 28000
    day_timeout_s: float = 1800.0  # a simulated day that takes longer fails the scenario
    delta_hours: int = 1  # delta DAG window width: 1 = hourly (the production schedule); CI uses 4
    heartbeat_timeout_s: int = 45  # task-instance heartbeat timeout: a killed worker's task is retried soon


class Scenario:
    def __init__(self, cfg: ScenarioConfig, home: Path):
        self.cfg, self.home = cfg, home
        self.plan = plan_for(datetime.now(UTC), cfg.days, cfg.history_days, cfg.delta_hours)
        self.faults = FaultLog()
        self.day_walls: list[dict] = []
        env = {
            "MFLI_SCHEDULE_START": self.plan.d0.isoformat(),
            "MFLI_SCHEDULE_END": self.plan.schedule_end.isoformat(),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(cfg.heartbeat_timeout_s),
            "MFLI_PLATFORM_NICE": os.environ.get("MFLI_PLATFORM_NICE", "0"),
            "MFLI_DELTA_SCHEDULE": self.plan.delta_cron,
        }
        self.stack = Stack(home / "p", cfg.port_base, env)
        self.dataset = home / "p" / "data" / "catalogue"
        self.conf = {"holdout_days": 0.5, "epochs": cfg.epochs, "lookback_days": 30, "shards": 2}

    # ---------------------------------------------------------------- data
    def write_data(self) -> None:
        from mfli.data.synthetic import SyntheticConfig, write_synthetic

        c, p = self.cfg, self.plan
        write_synthetic(SyntheticConfig(n_items=c.n_items, n_users=c.n_users, n_interactions=c.n_interactions,
                                        seed=c.seed, start=p.data_start.isoformat(), end=p.end.isoformat()),
                        self.dataset, progress=False)

    def _rewrite_items(self, fn) -> None:
        """Apply ``fn`` to the items table in place and refresh the folder's checksums (what a data
        provider delivering (or correcting) a file does)."""
        import pyarrow.parquet as pq

        from mfli.data.parquet_format import file_checksums

        path = self.dataset / "items.parquet"
        table = fn(pq.read_table(path))
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        marker = json.loads((self.dataset / "_dataset.json").read_text())
        marker["sha256"] = file_checksums(self.dataset)
        (self.dataset / "_dataset.json").write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")

    def break_hour(self, hour: datetime) -> None:
        """Every item created in ``[hour, hour + 1 h)`` loses its categories (an upstream bug): the
        whole catalogue stays within the empty-categories tolerance, that hour's window does not."""
        import pyarrow as pa
        import pyarrow.compute as pc

        self._good_categories = None

        def fn(t):
            ts = t.column("created_at")
            mask = pc.and_(pc.greater_equal(ts, pa.scalar(hour, ts.type)),
                           pc.less(ts, pa.scalar(hour + timedelta(hours=1), ts.type)))
            self._good_categories = t.column("categories")
            cats = t.column("categories").combine_chunks()
            empty = pa.array([[] if m else c for m, c in zip(mask.to_pylist(), cats.to_pylist())], cats.type)
            self._bad_count = int(pc.sum(mask).as_py() or 0)
            return t.set_column(t.schema.get_field_index("categories"), "categories", empty)

        self._rewrite_items(fn)

    def repair_hour(self) -> None:
        good = self._good_categories
        self._rewrite_items(lambda t: t.set_column(t.schema.get_field_index("categories"), "categories", good))

    # ---------------------------------------------------------------- airflow state
    def run_states(self, dag_id: str) -> list[tuple]:
        return self.stack.sql("select run_id, state, run_type, data_interval_start, data_interval_end "
                              "from dag_run where dag_id=%s order by id", (dag_id,))

    def ti_state(self, dag_id: str, run_id: str, task_id: str) -> tuple | None:
        rows = self.stack.sql("select state, try_number, pid, hostname from task_instance where dag_id=%s and "
                              "run_id=%s and task_id=%s and map_index=-1", (dag_id, run_id, task_id))
        return rows[0] if rows else None

    def wait(self, what: str, fn, timeout: float, every: float = 2.0):
        deadline = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(every)

    def backfill(self, day: datetime) -> str:
        d = day.strftime("%Y-%m-%dT%H:%M:%S+00:00")
        self.stack.airflow("backfill", "create", "--dag-id", DAILY, "--from-date", d, "--to-date", d,
                           "--dag-run-conf", json.dumps(self.conf), "--reprocess-behavior", "failed")
        rows = self.wait(f"backfill run {d}", lambda: self.stack.sql(
            "select run_id from dag_run where dag_id=%s and logical_date=%s", (DAILY, day)), 120, 1.0)
        return rows[0][0]

    def daily_done(self, run_id: str) -> str | None:
        rows = self.stack.sql("select state from dag_run where dag_id=%s and run_id=%s", (DAILY, run_id))
        return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

    def hourly_reached(self, t: datetime) -> bool:
        """Every scheduled hourly run whose window ends at or before ``t`` has finished (any state)."""
        rows = self.stack.sql(
            "select count(*) filter (where state in ('success','failed')), count(*) from dag_run where dag_id=%s "
            "and run_type='scheduled' and data_interval_end <= %s", (HOURLY, t))
        need = int((t - self.plan.d0).total_seconds() // (3600 * self.plan.delta_hours))
        return rows[0][0] >= need

    # ---------------------------------------------------------------- faults
    @staticmethod
    def _processes() -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, command line) of every process."""
        out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=False).stdout
        procs = {}
        for line in out.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2:
                procs[int(parts[0])] = (int(parts[1]), parts[2] if len(parts) > 2 else "")
        return procs

    def _worker_of(self, ti_id: str) -> tuple[str, list[int]] | None:
        """The Celery worker (``worker1``/``worker2``) whose process tree runs task ``ti_id``, and that
        whole tree (the task may run in its own process group: killing the worker's group alone would
        leave it running, which is not what a lost machine does)."""
        procs = self._processes()
        task = next((pid for pid, (_, args) in procs.items() if f"airflow worker -- {ti_id}" in args), None)
        if task is None:
            return None
        workers = {self.stack.pid(n): n for n in ("worker1", "worker2")}
        pid = task
        while pid > 1 and pid not in workers:
            pid = procs.get(pid, (0, ""))[0]
        if pid not in workers:
            return None
        tree, frontier = [pid], [pid]
        while frontier:
            kids = [c for c, (pp, _) in procs.items() if pp in frontier]
            tree += kids
            frontier = kids
        return workers[pid], tree

    def kill_worker_mid_training(self, run_id: str) -> None:
        def running():
            rows = self.stack.sql("select id::text from task_instance where dag_id=%s and run_id=%s and "
                                  "task_id='train' and state='running'", (DAILY, run_id))
            return rows[0][0] if rows else None

        ti_id = self.wait("train running", running, 900, 0.5)
        time.sleep(3.0)  # mid-training: the model is being fitted
        found = self.wait("train process", lambda: self._worker_of(ti_id), 60, 0.5)
        name, tree = found
        f = self.faults.inject("worker_kill", f"SIGKILL to {name} and its {len(tree) - 1} child processes while "
                               f"it trains {DAILY}/{run_id}", dag_id=DAILY, run_id=run_id,
                               task_id="train")
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(2.0)
        self.stack.restart(name)
        self.wait("train retried and done", lambda: (self.ti_state(DAILY, run_id, "train") or ("",))[0]
                  in ("success", "failed"), 1200, 2.0)
        st = self.ti_state(DAILY, run_id, "train")
        self.faults.recovered(f, f"{name} restarted; the orphaned try failed on the heartbeat timeout "
                              f"and try {st[1]} ended {st[0]}")

    def kill_s3_mid_publish(self, run_id: str) -> None:
        def publishing():
            st = self.ti_state(DAILY, run_id, "publish")
            if st and st[0] in ("queued", "running"):
                return True
            if self.daily_done(run_id):
                return "done"
            return False

        r = self.wait("publish started", publishing, 1800, 0.3)
        if r == "done":
            self.faults.faults.append(Fault("s3_outage", "run ended before publish started", time.time(), hit=False))
            return
        pid = self.stack.pid("seaweedfs")
        f = self.faults.inject("s3_outage", f"SIGKILL to the S3 server (process group {pid}) while "
                               f"{DAILY}/{run_id} publishes; restarted after 5 s", dag_id=None)
        os.killpg(pid, signal.SIGKILL)
        time.sleep(5.0)
        self.stack.restart("seaweedfs")
        self.wait("publish done", lambda: (self.ti_state(DAILY, run_id, "publish") or ("",))[0]
                  in ("success", "failed", "skipped", "upstream_failed"), 1200, 2.0)
        st = self.ti_state(DAILY, run_id, "publish")
        self.faults.recovered(f, f"S3 back; publish try {st[1]} ended {st[0]}")

    def scheduler_restart(self) -> None:
        f = self.faults.inject("scheduler_restart", "SIGTERM to the scheduler, then start it again", dag_id=None)
        self.stack.restart("scheduler")
        self.faults.recovered(f, "scheduler healthy again (API health)")

    # ---------------------------------------------------------------- main
    def run(self) -> dict:
        p, c = self.plan, self.cfg
        log(f"plan: data {p.data_start:%F %H:%M} .. {p.end:%F %H:%M}, days {p.d0:%F} x{p.days}, "
            f"{len(p.hours)} delta runs of {p.delta_hours} h, faults {'on' if c.faults else 'off'}")
        self.write_data()
        t_up = time.time()
        self.stack.up()
        t_up = time.time() - t_up
        self.stack.airflow("variables", "set", "mfli_dataset_uri", str(self.dataset))
        # backfill runs of a paused DAG stay queued; with catchup off and the schedule ending before the
        # scenario, unpausing schedules nothing of its own (next_dagrun stays empty)
        self.stack.airflow("dags", "unpause", DAILY)
        import pandas as pd

        from mfli.data.loaders import load_dataset

        ds = load_dataset(str(self.dataset))
        created = pd.to_datetime(ds.items["created_at"], utc=True)
        old_items = ds.items.loc[created < pd.Timestamp(p.d0), "item_id"].astype(int).tolist()
        window_items = ds.items.loc[(created >= pd.Timestamp(p.d0)) & (created < pd.Timestamp(p.end)),
                                    "item_id"].astype(int).tolist()
        users = ds.users["user_id"].astype(int).tolist()
        del ds
        watch = LatestWatch(self.stack.store())
        watch.start()
        load = Load(self.stack.serve_url, old_items, users, c.rps, c.seed)
        bad = p.bad_hour()
        daily_runs = []
        t_start = time.time()
        # day 0: bootstrap (the service has nothing to serve before it)
        day_t0 = time.time()
        run0 = self.backfill(p.daily_dates[0])
        daily_runs.append(run0)
        if c.faults and p.days == 1:
            self.kill_worker_mid_training(run0)
            self.kill_s3_mid_publish(run0)
        self.wait(f"{run0} done", lambda: self.daily_done(run0), c.day_timeout_s)
        self.wait("serve ready", lambda: _get(f"{self.stack.serve_url}/readyz") == 200, 300)
        load.start()
        if c.faults:  # from now on until repaired, every delta window holding that hour fails validation
            self.break_hour(bad)
            self._bad_fault = self.faults.inject(
                "bad_data", f"{self._bad_count} items created {bad:%F %H:00}-{bad + timedelta(hours=1):%H:00} "
                "without categories", dag_id=HOURLY)
        self.stack.airflow("dags", "unpause", HOURLY)
        restarted = False
        for k in range(1, p.days + 1):
            day_end = p.d0 + timedelta(days=k)
            if k < p.days:  # the next daily run once the hours reached its data end (+6 h)
                self.wait(f"hourly runs up to {day_end:%F %H:%M}", lambda t=day_end: self.hourly_reached(t), c.day_timeout_s, 3.0)
                run = self.backfill(p.daily_dates[k])
                daily_runs.append(run)
                if c.faults and k == 1:
                    self.kill_worker_mid_training(run)
                if c.faults and k == p.days - 1:
                    self.kill_s3_mid_publish(run)
            if c.faults and not restarted and k == p.days:
                mid = p.d0 + timedelta(days=k - 1, hours=12)
                self.wait(f"hourly runs up to {mid:%F %H:%M}", lambda t=mid: self.hourly_reached(t), c.day_timeout_s, 3.0)
                self.scheduler_restart()
                restarted = True
            if c.faults and k == p.days:
                self.handle_bad_hour(bad)
            self.wait(f"hourly runs up to {day_end:%F %H:%M}", lambda t=day_end: self.hourly_reached(t), c.day_timeout_s, 3.0)
            self.day_walls.append({"day": f"{day_end - timedelta(days=1):%F}", "wall_s": round(time.time() - day_t0, 1)})
            day_t0 = time.time()
        for r in daily_runs:
            self.wait(f"{r} done", lambda r=r: self.daily_done(r), c.day_timeout_s)
        self.wait("no active hourly run", lambda: not self.stack.sql(
            "select 1 from dag_run where dag_id=%s and state in ('queued','running')", (HOURLY,)), c.day_timeout_s, 3.0)
        scenario_s = time.time() - t_start
        self.wait_served()
        time.sleep(3.0)
        load.stop_event.set()
        load.join(30)
        watch.stop_event.set()
        watch.join(30)
        return self.report(window_items, old_items, users, load, watch, t_up, scenario_s, daily_runs)

    def handle_bad_hour(self, bad: datetime) -> None:
        """Wait for the run whose window holds the broken hour to end (failed on validation), repair the
        data, clear the failed delta runs and wait for them to succeed."""
        f = self._bad_fault

        def failed_runs():
            return self.stack.sql("select run_id from dag_run where dag_id=%s and state='failed'", (HOURLY,))

        def bad_run_failed():
            rows = self.stack.sql("select state from dag_run where dag_id=%s and run_type='scheduled' and "
                                  "data_interval_start<=%s and data_interval_end>%s", (HOURLY, bad, bad))
            return rows and rows[0][0] in ("failed", "success")

        self.wait(f"hourly run of {bad:%H:00} ended", bad_run_failed, 1800, 3.0)
        failed = [r[0] for r in failed_runs()]
        f.run_ids = failed  # data errors fail at once (no retry): these runs are the ones it broke
        self.repair_hour()
        log(f"data repaired; clearing the failed hourly runs {failed}")
        for run_id in failed:
            self._clear(run_id)
        self.wait("cleared runs done", lambda: all(
            self.stack.sql("select state from dag_run where dag_id=%s and run_id=%s", (HOURLY, r))[0][0] == "success"
            for r in failed), 1800, 3.0)
        self.faults.recovered(f, f"data repaired; runs {failed} cleared and succeeded" if failed
                              else "the hour did not fail (nothing to clear)")
        if not failed:
            f.hit = False

    def _clear(self, run_id: str) -> None:
        """Clear every task of the run (what "Clear" on a run does): the repaired data must be ingested
        again, not only the failed extraction re-run; the run is queued again. Through Airflow's own
        ``clear_task_instances`` in a child process with the stack's environment (asset-triggered runs
        have no logical date for ``airflow tasks clear``)."""
        code = (
            "import sys\n"
            "from airflow.models.taskinstance import TaskInstance as TI, clear_task_instances\n"
            "from airflow.utils.session import create_session\n"
            "with create_session() as s:\n"
            "    tis = s.query(TI).filter(TI.dag_id == sys.argv[1], TI.run_id == sys.argv[2]).all()\n"
            "    clear_task_instances(tis, s)\n"
            "    print(len(tis))\n"
        )
        p = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code, HOURLY, run_id],
                           env={**self.stack.base_env, **self.stack.env}, text=True, capture_output=True,
                           timeout=300, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"clearing {HOURLY}/{run_id} failed:\n{p.stderr[-2000:]}")
        log(f"cleared {p.stdout.strip()} tasks of {HOURLY}/{run_id}")

    def wait_served(self) -> None:
        """The service has LATEST and every delta published for it (serving refreshes every 10 s)."""
        from mfli.store import read_latest
        from mfli.store.deltas import list_deltas

        store = self.stack.store()
        latest = read_latest(store).snapshot_id
        want = {d["window"] for d in list_deltas(store, latest)}

        def ok():
            m = _get_json(f"{self.stack.serve_url}/metadata")
            if not m or m.get("snapshot_id") != latest:
                return False
            have = {Path(x).stem for x in m.get("deltas_applied", [])} | set(m.get("index", {}).get("delta_files", []))
            have |= {Path(x).stem for x in m.get("index", {}).get("delta_files", [])}
            return want <= have

        self.wait(f"service on {latest} with {len(want)} deltas", ok, 300, 2.0)

    # ---------------------------------------------------------------- measurements
    def report(self, window_items, old_items, users, load, watch, t_up, scenario_s, daily_runs) -> dict:
        import httpx

        from mfli.store import list_snapshots, read_latest, verify_snapshot

        store = self.stack.store()
        latest = read_latest(store).snapshot_id
        answers: dict[int, dict | None] = {}
        with httpx.Client(timeout=10.0) as client:
            for i in window_items:
                try:
                    r = client.post(f"{self.stack.serve_url}/retrieve", json={"recent_items": [i], "mode": "trigger", "k": 20})
                    answers[i] = r.json() if r.status_code == 200 else None
                except httpx.HTTPError:
                    answers[i] = None
        lost = lost_items(window_items, answers, latest)
        snaps = list_snapshots(store)
        verifies = {}
        for s in snaps:
            try:
                verify_snapshot(store, s["snapshot_id"])
                verifies[s["snapshot_id"]] = True
            except Exception as exc:  # noqa: BLE001 - reported
                verifies[s["snapshot_id"]] = f"{type(exc).__name__}: {exc}"
        from mfli.store.deltas import list_deltas

        deltas = {s["snapshot_id"]: len(list_deltas(store, s["snapshot_id"])) for s in snaps}
        served_eq, eq_detail = self.served_equals_gated(store, latest, old_items + window_items, users)
        failed_tries = self.failed_tries()
        final = {(r[0], r[1], r[2], r[3]): r[4] for r in self.stack.sql(
            "select dag_id, run_id, task_id, map_index, state from task_instance")}
        now = time.time()
        failed = self.faults.attribute(failed_tries, final, now)
        reqs = request_summary(load.samples, self.faults.outages())
        unfinished = [f"{r[0]}:{r[1]}" for r in self.stack.sql(
            "select dag_id, run_id, state from dag_run where state <> 'success'")]
        report = {
            "command": f"infra/local/platform.sh scenario --days {self.cfg.days} --delta-hours {self.cfg.delta_hours}"
                       + ("" if self.cfg.faults else " --no-faults"),
            "days": self.cfg.days,
            "window": {"start": self.plan.d0.isoformat(), "end": self.plan.end.isoformat(),
                       "data_start": self.plan.data_start.isoformat()},
            "catalogue": {"items": self.cfg.n_items, "users": self.cfg.n_users,
                          "interactions": self.cfg.n_interactions, "window_items": len(window_items)},
            "lost_items": len(lost),
            "lost_item_ids": lost[:50],
            "lost_items_definition": "items created in [window.start, window.end) for which POST /retrieve "
                                     "{recent_items:[id], mode:trigger, k:20} is not a 200 in trigger mode from "
                                     "LATEST with >= 1 item (trigger mode ignores ids the live index and its "
                                     "applied deltas do not hold)",
            "failed_tasks": failed,
            "snapshots_published": len(snaps),
            "snapshots": [s["snapshot_id"] for s in snaps],
            "deltas_published": sum(deltas.values()),
            "deltas_per_snapshot": deltas,
            "latest": latest,
            "latest_history": watch.history,
            "latest_monotonic": latest_monotonic(watch.history),
            "served_equals_gated": served_eq,
            "served_equals_gated_detail": eq_detail,
            "every_snapshot_verifies": bool(snaps) and all(v is True for v in verifies.values()),
            "snapshot_verification": verifies,
            **reqs,
            "request_error_details": load.errors,
            "load_rps": self.cfg.rps,
            "snapshots_seen_by_load": load.snapshots,
            "stack_up_s": round(t_up, 1),
            "scenario_s": round(scenario_s, 1),
            "wall_s_per_day": self.day_walls,
            "queue_waits": self.queue_waits(),
            "task_durations": self.task_durations(),
            "daily_runs": daily_runs,
            "hourly_runs": self.run_counts(HOURLY),
            "unfinished_runs": unfinished,
            "faults": self.faults.as_list(),
        }
        report["targets_missed"] = targets_missed(report)
        if report.get("request_errors"):
            report["serve_log_errors"] = serve_log_errors(self.stack.home / "logs" / "serve.log")
        return report

    def served_equals_gated(self, store, latest: str, items: list[int], users: list[int]) -> tuple[bool, dict]:
        """User-mode answers (deterministic beam search) of the service vs ``Snapshot.retriever()`` over
        the same snapshot and deltas, built here from the store (what the gate measures)."""
        import random

        import httpx

        from mfli.serve.snapshot_retriever import RetrievalRequest, build_snapshot_retriever
        from mfli.store.deltas import list_deltas, load_deltas
        from mfli.store.snapshots import load_snapshot

        meta = _get_json(f"{self.stack.serve_url}/metadata") or {}
        applied = {Path(x).stem for x in meta.get("deltas_applied", [])}
        cache = Path(tempfile.mkdtemp(prefix="scenario-gated-", dir=self.home))
        folder = load_snapshot(store, latest, cache)
        mans = [m for m in list_deltas(store, latest) if m["window"] in applied or not applied]
        paths = load_deltas(store, latest, cache, mans)
        local = build_snapshot_retriever(folder, paths)
        rng = random.Random(self.cfg.seed + 1)
        same, n = 0, 0
        diffs = []
        with httpx.Client(timeout=10.0) as client:
            for _ in range(50):
                hist = rng.sample(items, 5)
                body = {"user_features": {"history_item_ids": hist}, "k": 50, "mode": "user"}
                r = client.post(f"{self.stack.serve_url}/retrieve", json=body)
                mine = local.retrieve(RetrievalRequest(user_features={"history_item_ids": hist}, k=50, mode="user"))
                served = [x["item_id"] for x in r.json()["items"]] if r.status_code == 200 else None
                gated = [x["item_id"] for x in mine["items"]]
                n += 1
                if served == gated:
                    same += 1
                elif len(diffs) < 3:
                    diffs.append({"history": hist, "served": (served or [])[:10], "gated": gated[:10]})
        return same == n, {"requests": n, "identical": same, "deltas_applied": sorted(applied),
                           "examples": diffs}

    def failed_tries(self) -> list[dict]:
        rows = self.stack.sql(
            "select dag_id, run_id, task_id, map_index, try_number, extract(epoch from end_date) from "
            "task_instance_history where state='failed' union all select dag_id, run_id, task_id, map_index, "
            "try_number, extract(epoch from end_date) from task_instance where state in ('failed','up_for_retry')")
        return [{"dag_id": r[0], "run_id": r[1], "task_id": r[2], "map_index": r[3], "try_number": r[4],
                 "end_ts": float(r[5] or 0)} for r in rows]

    def queue_waits(self) -> dict:
        """queued -> running of every task try (seconds), per DAG: p50, p95, max."""
        out = {}
        for dag in (DAILY, HOURLY):
            rows = self.stack.sql(
                "select extract(epoch from start_date - queued_dttm) from task_instance where dag_id=%s and "
                "start_date is not null and queued_dttm is not null union all select extract(epoch from "
                "start_date - queued_dttm) from task_instance_history where dag_id=%s and start_date is not "
                "null and queued_dttm is not null", (dag, dag))
            w = [max(0.0, float(r[0])) for r in rows]
            out[dag] = {"tries": len(w), "p50_s": _r(percentile(w, 50)), "p95_s": _r(percentile(w, 95)),
                        "max_s": _r(max(w) if w else None)}
        return out

    def task_durations(self) -> dict:
        rows = self.stack.sql(
            "select dag_id, task_id, avg(extract(epoch from end_date - start_date)), count(*) from task_instance "
            "where state='success' group by dag_id, task_id")
        return {f"{d}.{t}": {"mean_s": _r(float(a)), "n": int(n)} for d, t, a, n in rows}

    def run_counts(self, dag_id: str) -> dict:
        rows = self.stack.sql("select run_type, state, count(*), avg(extract(epoch from end_date - start_date)) "
                              "from dag_run where dag_id=%s group by run_type, state", (dag_id,))
        return {f"{t}:{s}": {"runs": int(n), "mean_s": _r(float(a) if a is not None else None)} for t, s, n, a in rows}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=5.0).status_code
    except httpx.HTTPError:
        return 0


def _get_json(url: str) -> dict | None:
    import httpx

    try:
        r = httpx.get(url, timeout=5.0)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--home", help="state folder (default: a fresh folder under .mfli/)")
    ap.add_argument("--keep-state", action="store_true", help="keep the state folder (logs) after the run")
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("MFLI_PLATFORM_PORT_BASE", "28000")))
    ap.add_argument("--rps", type=float, default=ScenarioConfig.rps)
    ap.add_argument("--delta-hours", type=int, default=1,
                    help="width of the delta DAG's windows (1 = hourly; a divisor of 24): fewer, wider runs")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    cfg = ScenarioConfig(days=a.days, faults=a.faults, port_base=a.port_base, rps=a.rps, delta_hours=a.delta_hours)
    if a.home:
        home = Path(a.home)
        home.mkdir(parents=True, exist_ok=True)
    else:
        (ROOT / ".mfli").mkdir(exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="scenario-", dir=ROOT / ".mfli"))
    home.chmod(0o755)  # as root, PostgreSQL runs as the postgres user and must reach its folder
    sc = Scenario(cfg, home)

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    report: dict[str, Any]
    try:
        report = sc.run()
    except BaseException as exc:  # noqa: BLE001 - the stack is stopped and the error reported
        report = {"error": f"{type(exc).__name__}: {exc}", "faults": sc.faults.as_list(),
                  "wall_s_per_day": sc.day_walls}
        report["targets_missed"] = [report["error"]]
        log(f"scenario failed: {report['error']}")
    finally:
        sc.stack.down()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not a.keep_state and not report.get("error"):
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    miss = report.get("targets_missed") or []
    for m in miss:
        log(f"TARGET MISSED: {m}")
    log(f"report written to {a.out}" + ("" if miss else " (all targets met)"))
    return 1 if miss else 0


if __name__ == "__main__":
    sys.exit(main())
