"""Load test of the retrieval service: `mfli serve` in a subprocess on loopback, driven by concurrent clients.

    nice -n 5 .venv/bin/python bench/load_test.py --seconds 30 --concurrency 32 --out bench/results/load_test.json
    nice -n 5 .venv/bin/python bench/load_test.py --concurrency 8,16 --seconds 10 --snapshot-dir /tmp/mfli-load
    .venv/bin/python bench/load_test.py --scenarios clean --seconds 30 --concurrency 16     # the plain run

Builds its own snapshot (synthetic catalogue from mfli.data.synthetic, a short training run, the full
index build, and a delta of new items), publishes it to a local store in a temp dir, starts
`mfli serve` on 127.0.0.1 at a free port (polling the store every second), waits for /readyz, warms
up, then for each concurrency runs each scenario for `--seconds`, keeping that many requests in flight
(asyncio + httpx, keep-alive connections, only to the server it started; `--max-requests` bounds the
count too):

- ``clean``: legitimate requests only (trigger mode: a user's 1-10 most recent items; user mode: user
  id + its history as features; k=100);
- ``swap``: the same, while a delta and a whole new snapshot are published in turn every
  `--swap-every` seconds (the server picks each up within a second and swaps it in);
- ``swap+hostile``: the same again, with `--hostile-share` of the requests hostile: oversized bodies
  (2 MB, 413), ids past int64, bools and strings as ids, 1e308 quotas, unknown fields, broken JSON,
  deep nesting, unknown facets (4xx each).

Reports per run: legitimate requests/s, latency percentiles (client side, full HTTP round trip),
errors among legitimate requests (must be 0; exit status 1 otherwise), hostile requests and whether
each got the 4xx it should (a 5xx or a dropped connection counts as unexpected), swaps done and
snapshots seen in answers, the server's mean batch size, CPU used by server and client and the
machine's load average; then the p99 ratio of ``swap+hostile`` to ``swap`` per concurrency. As a table
and as JSON (--out). The server is stopped with SIGINT (then killed if it hangs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
# import the checkout's mfli package even when an older editable install maps it elsewhere
sys.path.insert(0, str(REPO))


def build_snapshot(out: Path, n_items: int, n_users: int, n_interactions: int, steps: int, seed: int) -> dict:
    """Synthetic catalogue -> short training run -> index -> snapshot folder (model/, index/, report/, metrics.json)."""
    import torch

    from mfli.data.synthetic import SyntheticConfig, generate
    from mfli.index.build import build_from_encoded, encode_items, popularity_score
    from mfli.train import TrainConfig, train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = generate(SyntheticConfig(n_items=n_items, n_users=n_users, n_interactions=n_interactions, seed=seed))
    cfg = TrainConfig.from_dict({"batch_size": 512, "max_steps": steps, "epochs": 50, "valid_frac": 0.0,
                                 "progress": False, "num_threads": 1, "seed": seed})
    model = train(ds, ds.interactions, cfg)
    t_train = time.perf_counter() - t0
    enc = encode_items(model, ds.items)
    result = build_from_encoded(enc, model.codebooks, model.facets, popularity_score(enc.item_ids, ds.interactions))
    model.save(out / "model")
    result.index.save(out / "index")
    (out / "report").mkdir(parents=True, exist_ok=True)
    # a delta of new items (copies of existing rows under fresh ids), published during the swap runs
    from mfli.index.delta import assign_paths, delta_rows_table

    new = ds.items.iloc[:200].copy()
    new["item_id"] = ds.items["item_id"].max() + 1 + np.arange(len(new))
    emb = model.item_embeddings(new).numpy()
    pq.write_table(delta_rows_table(new["item_id"].to_numpy(), emb, assign_paths(emb, model.codebooks,
                                                                                 result.index.maps),
                                    result.index.facet_names), out.parent / f"{out.name}.delta.parquet")
    info = {"items": int(ds.items.shape[0]), "users": int(ds.users.shape[0]) if ds.users is not None else n_users,
            "interactions": len(ds.interactions), "train_steps": steps,
            "codebook": list(model.codebooks.shape),
            "clusters_per_facet": [c.n_clusters for c in result.index.facets],
            "build_seconds": round(time.perf_counter() - t0, 1), "train_seconds": round(t_train, 1)}
    (out / "report" / "load_test_snapshot.json").write_text(json.dumps(info, indent=2))
    (out / "metrics.json").write_text(json.dumps({"synthetic": True}))
    # request material: every user's history, oldest first
    inter = ds.interactions.sort_values(["user_id", "event_ts"], kind="stable")
    hist = {int(u): g["item_id"].to_numpy(np.int64)[-50:].tolist() for u, g in inter.groupby("user_id")}
    (out / "report" / "histories.json").write_text(json.dumps(hist))
    return info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (Linux); nan elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def make_requests(histories: dict[int, list[int]], n: int, trigger_share: float, k: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    users = [u for u, h in histories.items() if h]
    out = []
    for _ in range(n):
        u = rng.choice(users)
        h = histories[u]
        if rng.random() < trigger_share:
            out.append({"recent_items": h[-rng.randint(1, 10):], "k": k})
        else:
            out.append({"user_id": u, "user_features": {"history_item_ids": h}, "k": k, "mode": "user"})
    return out


#: Hostile request kinds: (name, body bytes, expected status). The 2 MB body is refused from its
#: Content-Length (413) before the server reads it.
def hostile_requests() -> list[tuple[str, bytes, int]]:
    big = json.dumps({"user_features": {"history_item_ids": list(range(300_000))}}).encode()
    bodies: list[tuple[str, object, int]] = [
        ("oversized-2MB", big, 413),
        ("user-id-2^63", {"user_id": 2**63, "k": 10}, 422),
        ("user-id-2^70-batchmate", {"user_id": 2**70, "recent_items": [1, 2], "k": 10}, 422),
        ("item-id-bool", {"recent_items": [True, False], "k": 10}, 422),
        ("item-id-string", {"recent_items": ["12"], "k": 10}, 422),
        ("quota-1e308", {"recent_items": [1], "facet_quotas": {"semantic": 1e308}}, 422),
        ("k-huge", {"recent_items": [1], "k": 10**9}, 422),
        ("unknown-field", {"recent_item": [1]}, 422),
        ("broken-json", b'{"recent_items": [1,', 422),
        ("deep-nesting", b"[" * 50_000 + b"]" * 50_000, 400),
        ("unknown-facet", {"recent_items": [1], "facet_quotas": {"colour": 1}}, 422),
    ]
    return [(n, b if isinstance(b, bytes) else json.dumps(b).encode(), st) for n, b, st in bodies]


async def drive(url: str, bodies: list[bytes], hostile: list[tuple[str, bytes, int]], hostile_share: float,
                seconds: float, concurrency: int, warmup: float, max_requests: int, seed: int,
                swapper=None) -> dict:
    """Keep ``concurrency`` requests in flight; latencies of legitimate requests started after ``warmup``."""
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    modes: dict[str, int] = {}
    snapshots: dict[str, int] = {}
    hostile_seen: dict[str, dict[str, int]] = {}
    unexpected: list[str] = []
    sent = 0
    # idle connections expire on the client first (server: 75 s), so no request races a server-side close
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        t_start = time.perf_counter()
        t_measure = t_start + warmup
        t_end = t_measure + seconds

        async def worker(w: int) -> None:
            nonlocal sent
            rng = random.Random(seed * 1000 + w)
            i = w
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end or sent >= max_requests:
                    return
                sent += 1
                if hostile and rng.random() < hostile_share:
                    name, body, want = hostile[rng.randrange(len(hostile))]
                    try:
                        r = await client.post("/retrieve", content=body, headers=headers)
                        got = str(r.status_code)
                    except Exception as exc:  # noqa: BLE001 - a dropped connection is an unexpected answer
                        got = type(exc).__name__
                    if t0 >= t_measure:
                        hostile_seen.setdefault(name, {}).setdefault(got, 0)
                        hostile_seen[name][got] += 1
                        if got != str(want):
                            unexpected.append(f"{name}: {got}")
                    continue
                body = bodies[i % len(bodies)]
                i += concurrency
                try:
                    r = await client.post("/retrieve", content=body, headers=headers)
                    ok = r.status_code == 200 and len(r.json()["items"]) > 0
                    err = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                    ans = r.json() if r.status_code == 200 else {}
                except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                    err, ans = f"{type(exc).__name__}: {exc!r} after {time.perf_counter() - t0:.2f} s", {}
                t1 = time.perf_counter()
                if t0 >= t_measure:
                    if err is None:
                        lat.append(t1 - t0)
                        modes[ans["mode"]] = modes.get(ans["mode"], 0) + 1
                        snapshots[ans["snapshot_id"]] = snapshots.get(ans["snapshot_id"], 0) + 1
                    else:
                        errors.append(err)

        tasks = [worker(w) for w in range(concurrency)]
        if swapper is not None:
            tasks.append(swapper(t_measure, t_end))
        await asyncio.gather(*tasks)
        measured = min(time.perf_counter(), t_end) - t_measure
    return {"latencies": lat, "errors": errors, "modes": modes, "measured_s": measured, "snapshots": snapshots,
            "hostile": hostile_seen, "unexpected": unexpected}


def make_swapper(store, snap: Path, delta: Path, every: float, log: list[str]):
    """Coroutine factory: publish a delta, then a new snapshot, then a delta ... every ``every`` seconds."""
    from mfli.store import publish_delta, publish_snapshot

    state = {"n": 0, "live": "load-test"}

    async def swapper(t_start: float, t_end: float) -> None:
        nxt = t_start + every / 2
        while nxt < t_end - 1:
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            state["n"] += 1
            if state["n"] % 2:
                window = f"w{state['n']:04d}"
                await asyncio.to_thread(publish_delta, store, state["live"], window, delta)
                log.append(f"delta {state['live']}/{window}")
            else:
                sid = f"load-test-{state['n']:04d}"
                await asyncio.to_thread(publish_snapshot, store, snap, sid, {"synthetic": True})
                state["live"] = sid
                log.append(f"snapshot {sid}")
            nxt += every

    return swapper


SCENARIOS = ("clean", "swap", "swap+hostile")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured duration of each run")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each run")
    ap.add_argument("--concurrency", default="32", help="requests in flight; a comma list runs each (8,16,32)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {SCENARIOS}")
    ap.add_argument("--hostile-share", type=float, default=0.01, help="share of hostile requests (swap+hostile)")
    ap.add_argument("--swap-every", type=float, default=5.0, help="seconds between publishes (swap runs)")
    ap.add_argument("--max-requests", type=int, default=200_000, help="most requests sent per run")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--trigger-share", type=float, default=0.7, help="share of trigger-mode requests")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--interactions", type=int, default=100_000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--max-batch", type=int, default=64, help="server --max-batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snapshot-dir", type=Path, default=None,
                    help="build the snapshot here and reuse it when it is already there (default: temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    if not args.concurrency or any(c < 1 or c > 256 for c in args.concurrency):
        ap.error("--concurrency values must be in [1, 256]")
    if set(args.scenarios) - set(SCENARIOS):
        ap.error(f"--scenarios: unknown {sorted(set(args.scenarios) - set(SCENARIOS))}; known {SCENARIOS}")
    if not 0 < args.seconds <= 600 or not 0 <= args.hostile_share <= 0.5:
        ap.error("--seconds must be in (0, 600] and --hostile-share in [0, 0.5]")
    work = Path(tempfile.mkdtemp(prefix="mfli-load-"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # store, cache and (default) snapshot; --snapshot-dir is kept


def _wait_ready(url: str, server: subprocess.Popen, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not come up:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def _run(args: argparse.Namespace, work: Path) -> dict:
    import httpx

    from mfli.store import open_store, publish_snapshot

    snap = args.snapshot_dir or work / "snapshot"
    delta = snap.parent / f"{snap.name}.delta.parquet"
    if not (snap / "index" / "index.json").exists() or not delta.exists():
        print(f"building the snapshot ({args.items} items) in {snap} ...", file=sys.stderr)
        snap.mkdir(parents=True, exist_ok=True)
        build_snapshot(snap, args.items, args.users, args.interactions, args.train_steps, args.seed)
    info = json.loads((snap / "report" / "load_test_snapshot.json").read_text())
    histories = {int(u): h for u, h in json.loads((snap / "report" / "histories.json").read_text()).items()}
    store = open_store(work / "store")
    publish_snapshot(store, snap, "load-test", metrics={"synthetic": True})

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MFLI_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("MFLI_FEAST_REPO", None)  # the bench passes histories itself
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", "from mfli.cli import app; app()", "serve", "--store", str(work / "store"),
             "--host", "127.0.0.1", "--port", str(port), "--refresh-seconds", "1",
             "--max-batch", str(args.max_batch), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    runs = []
    try:
        _wait_ready(url, server, log_path)
        bodies = [json.dumps(b).encode() for b in make_requests(histories, 5000, args.trigger_share, args.k, args.seed)]
        hostile = hostile_requests()
        for conc in args.concurrency:
            for scenario in args.scenarios:
                swaps: list[str] = []
                swapper = make_swapper(store, snap, delta, args.swap_every, swaps) if "swap" in scenario else None
                share = args.hostile_share if "hostile" in scenario else 0.0
                meta0 = httpx.get(f"{url}/metadata", timeout=5).json()
                load0 = os.getloadavg()
                cpu_srv0, cpu_cli0 = proc_cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF)
                wall0 = time.perf_counter()
                res = asyncio.run(drive(url, bodies, hostile, share, args.seconds, conc, args.warmup,
                                        args.max_requests, args.seed, swapper))
                wall = time.perf_counter() - wall0
                cpu_srv1, cpu_cli1 = proc_cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF)
                load1 = os.getloadavg()
                meta1 = httpx.get(f"{url}/metadata", timeout=5).json()
                runs.append(_summary(scenario, conc, res, swaps, meta0, meta1, wall, load0, load1,
                                     cpu_srv1 - cpu_srv0, cpu_cli0, cpu_cli1))
                print(_row(runs[-1]), file=sys.stderr)
        metrics_text = httpx.get(f"{url}/metrics", timeout=5).text
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    ratios = {}
    for conc in args.concurrency:
        by = {r["scenario"]: r for r in runs if r["concurrency"] == conc}
        if "swap" in by and "swap+hostile" in by and by["swap"]["p99_ms"]:
            ratios[str(conc)] = round(by["swap+hostile"]["p99_ms"] / by["swap"]["p99_ms"], 2)
    out = {
        "runs": runs,
        "p99_ratio_hostile_vs_swap": ratios,
        "server_exit_code": server.returncode,
        "server_refresh_failures": _metric(metrics_text, "mfli_refresh_failures_total"),
        "seconds": args.seconds, "warmup_s": args.warmup, "k": args.k, "trigger_share": args.trigger_share,
        "hostile_share": args.hostile_share, "swap_every_s": args.swap_every, "max_batch": args.max_batch,
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "snapshot": info,
    }
    print(f"\nPOST /retrieve on 127.0.0.1, {args.seconds:g} s per run, k={args.k}, "
          f"hostile share {args.hostile_share:g} (swap+hostile), a publish every {args.swap_every:g} s (swap runs)")
    print(_HEADER)
    for r in runs:
        print(_row(r))
    for conc, ratio in ratios.items():
        print(f"  concurrency {conc}: p99 swap+hostile / swap = {ratio}")
    print(f"  server exit code {server.returncode}, refresh failures {out['server_refresh_failures']}, "
          f"catalogue {info['items']} items, {os.cpu_count()} CPUs")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    bad = [r for r in runs if r["legit_errors"] or r["hostile_unexpected"]]
    for r in bad:
        print(f"{r['scenario']} c={r['concurrency']}:", *r["error_examples"], sep="\n  ", file=sys.stderr)
    if bad:
        print("server log (tail):", log_path.read_text(errors="replace")[-3000:], sep="\n", file=sys.stderr)
    out["ok"] = not bad and server.returncode in (0, None)
    return out


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _summary(scenario: str, conc: int, res: dict, swaps: list[str], meta0: dict, meta1: dict, wall: float,
             load0: tuple, load1: tuple, cpu_srv: float, cpu_cli0, cpu_cli1) -> dict:
    lat = np.array(res["latencies"]) * 1000
    n_ok, n_err = len(lat), len(res["errors"])
    s0, s1 = meta0["service"], meta1["service"]
    batches = s1["batches"] - s0["batches"]

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if n_ok else None

    return {
        "scenario": scenario, "concurrency": conc, "seconds": round(res["measured_s"], 1),
        "requests_per_s": round(n_ok / res["measured_s"], 1),
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": round(float(lat.max()), 2) if n_ok else None,
        "legit_requests": n_ok, "legit_errors": n_err,
        "hostile_requests": sum(sum(v.values()) for v in res["hostile"].values()),
        "hostile_unexpected": len(res["unexpected"]), "hostile_statuses": res["hostile"],
        "error_examples": (res["errors"] + res["unexpected"])[:5],
        "modes": res["modes"], "snapshots_seen": res["snapshots"], "publishes": swaps,
        "mean_batch": round((s1["requests"] - s0["requests"]) / batches, 2) if batches else None,
        "server_cpu_cores": round(cpu_srv / wall, 2),
        "client_cpu_cores": round(((cpu_cli1.ru_utime + cpu_cli1.ru_stime) - (cpu_cli0.ru_utime + cpu_cli0.ru_stime))
                                  / wall, 2),
        "loadavg_before": round(load0[0], 2), "loadavg_after": round(load1[0], 2),
    }


_HEADER = (f"  {'scenario':<13} {'conc':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'legit':>7} {'errors':>6} "
           f"{'hostile':>7} {'unexp.':>6} {'publishes':>9} {'snapshots':>9} {'batch':>5} {'load':>5}")


def _row(r: dict) -> str:
    return (f"  {r['scenario']:<13} {r['concurrency']:>4} {r['requests_per_s']:>7} {r['p50_ms']!s:>7} "
            f"{r['p99_ms']!s:>7} {r['legit_requests']:>7} {r['legit_errors']:>6} {r['hostile_requests']:>7} "
            f"{r['hostile_unexpected']:>6} {len(r['publishes']):>9} {len(r['snapshots_seen']):>9} "
            f"{r['mean_batch']!s:>5} {r['loadavg_after']:>5}")


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["ok"] else 1)
