"""Load test of the retrieval service: `mfli serve` in a subprocess on loopback, driven by concurrent clients.

    .venv/bin/python bench/load_test.py --seconds 30 --concurrency 16 --out bench/results/load_test.json
    .venv/bin/python bench/load_test.py --items 20000 --snapshot-dir /tmp/mfli-load-snapshot   # reuse the build

Builds its own snapshot (synthetic catalogue from mfli.data.synthetic, a short training run, the full
index build), publishes it to a local store in a temp dir, starts `mfli serve` on 127.0.0.1 at a free
port, waits for /health, warms up, then keeps `--concurrency` requests in flight for `--seconds`
(asyncio + httpx, keep-alive connections, only to the server it started). The request mix is
trigger mode (a user's 1-10 most recent items) and user mode (user id + its history as features), k=100.

Reports requests/s, latency percentiles (client side, full HTTP round trip), errors (must be 0; the exit
status is 1 otherwise), the server's mean batch size, CPU used by server and client, and the machine's
load average, as a table and as JSON (--out). The server is stopped with SIGINT (then killed if it hangs).
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


async def drive(url: str, bodies: list[dict], seconds: float, concurrency: int, warmup: float) -> dict:
    """Keep ``concurrency`` requests in flight; latencies of those started after ``warmup`` seconds."""
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    modes = {"trigger": 0, "user": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        t_start = time.perf_counter()
        t_measure = t_start + warmup
        t_end = t_measure + seconds

        async def worker(w: int) -> None:
            i = w
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                body = bodies[i % len(bodies)]
                i += concurrency
                try:
                    r = await client.post("/retrieve", json=body)
                    ok = r.status_code == 200 and len(r.json()["items"]) > 0
                    err = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                    mode = r.json().get("mode") if r.status_code == 200 else None
                except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                    err, mode = f"{type(exc).__name__}: {exc}", None
                t1 = time.perf_counter()
                if t0 >= t_measure:
                    if err is None:
                        lat.append(t1 - t0)
                        modes[mode] = modes.get(mode, 0) + 1
                    else:
                        errors.append(err)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        measured = time.perf_counter() - t_measure
    return {"latencies": lat, "errors": errors, "modes": modes, "measured_s": measured}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured duration")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before it")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight")
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
    if args.concurrency < 1 or args.concurrency > 256:
        ap.error("--concurrency must be in [1, 256]")
    work = Path(tempfile.mkdtemp(prefix="mfli-load-"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # store, cache and (default) snapshot; --snapshot-dir is kept


def _run(args: argparse.Namespace, work: Path) -> dict:
    from mfli.store import open_store, publish_snapshot

    snap = args.snapshot_dir or work / "snapshot"
    if not (snap / "index" / "index.json").exists():
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
             "--host", "127.0.0.1", "--port", str(port), "--refresh-seconds", "60",
             "--max-batch", str(args.max_batch), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        meta0 = httpx.get(f"{url}/metadata", timeout=5).json()
        bodies = make_requests(histories, 5000, args.trigger_share, args.k, args.seed)
        load0 = os.getloadavg()
        cpu_srv0, cpu_cli0 = proc_cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.perf_counter()
        res = asyncio.run(drive(url, bodies, args.seconds, args.concurrency, args.warmup))
        wall = time.perf_counter() - wall0
        cpu_srv1, cpu_cli1 = proc_cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF)
        load1 = os.getloadavg()
        meta1 = httpx.get(f"{url}/metadata", timeout=5).json()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    lat = np.array(res["latencies"]) * 1000
    n_ok, n_err = len(lat), len(res["errors"])
    s0, s1 = meta0["service"], meta1["service"]
    batches = s1["batches"] - s0["batches"]
    out = {
        "requests_per_s": round(n_ok / res["measured_s"], 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if n_ok else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 2) if n_ok else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if n_ok else None,
        "max_ms": round(float(lat.max()), 2) if n_ok else None,
        "requests": n_ok,
        "errors": n_err,
        "error_examples": res["errors"][:5],
        "modes": res["modes"],
        "seconds": round(res["measured_s"], 1),
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "k": args.k,
        "trigger_share": args.trigger_share,
        "mean_batch": round((s1["requests"] - s0["requests"]) / batches, 2) if batches else None,
        "server_exit_code": server.returncode,
        "server_cpu_cores": round((cpu_srv1 - cpu_srv0) / wall, 2),
        "client_cpu_cores": round(((cpu_cli1.ru_utime + cpu_cli1.ru_stime) - (cpu_cli0.ru_utime + cpu_cli0.ru_stime))
                                  / wall, 2),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in load1],
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "snapshot": {**info, "n_items_served": meta1.get("n_items")},
    }
    rows = [("requests/s", out["requests_per_s"]), ("p50 ms", out["p50_ms"]), ("p90 ms", out["p90_ms"]),
            ("p99 ms", out["p99_ms"]), ("max ms", out["max_ms"]), ("requests", n_ok), ("errors", n_err),
            ("concurrency", args.concurrency), ("mean batch", out["mean_batch"]),
            ("trigger / user", f"{res['modes'].get('trigger', 0)} / {res['modes'].get('user', 0)}"),
            ("server CPU (cores)", out["server_cpu_cores"]), ("client CPU (cores)", out["client_cpu_cores"]),
            ("load avg before/after", f"{load0[0]:.2f} / {load1[0]:.2f} ({os.cpu_count()} CPUs)"),
            ("catalogue", f"{info['items']} items, clusters/facet {info['clusters_per_facet']}"),
            ("server exit code", server.returncode)]
    width = max(len(r[0]) for r in rows)
    print(f"\nPOST /retrieve on 127.0.0.1, {out['seconds']} s, k={args.k}")
    for name, val in rows:
        print(f"  {name:<{width}}  {val}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    if n_err:
        print("errors:", *res["errors"][:5], sep="\n  ", file=sys.stderr)
    return out


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result["errors"] or result["server_exit_code"] not in (0, None) else 0)
