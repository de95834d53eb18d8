#!/usr/bin/env python3
"""`make bench`: a proxy pair against a direct connection and two reference pairs,
same run, interleaved.

client -> nginx                                                       (direct)
client -> outbound proxy -> mTLS -> inbound proxy -> nginx            (mesh)
client -> nginx (proxy) -> mTLS -> nginx (proxy) -> nginx             (nginx pair)
client -> HAProxy -> mTLS -> HAProxy -> nginx                         (HAProxy pair)

As root (with ip, iptables and setpriv), also the transparent mode, the way pods run
it (bench/transparent.py): client and server pods in network namespaces with the
capture rules of `mesh-proxy init`, wrk inside the client pod, beside a direct path over
the same veths (BENCH_TRANSPARENT=0 skips it).

Three loads, each in every round against every peer: wrk over HTTP/1.1 with
BENCH_CONNECTIONS (16) connections, wrk with one connection, and h2load over h2c
(HTTP/2 with prior knowledge, 4 clients x 8 streams). Every proxy runs one
worker thread (BENCH_WORKERS). Prints requests/s, latency, the proxies' CPU seconds per request
(from /proc), added latency at one connection, peak RSS, and a table of the mesh
against both reference pairs with the targets of issue 16. The reference pairs
do the same job (see bench/peers.py). Everything runs on loopback; every load is
bounded in time; only processes this script started are stopped, by PID.

  python3 bench/run.py                  the benchmark (needs a release build)
  python3 bench/run.py --check-config   write every config to a temp dir and validate it
  python3 bench/run.py --smoke          start upstream and reference pairs, one request each

A change on the request path, before and after in the same run:

  cp target/release/mesh-proxy /tmp/mesh-proxy.before   # then rebuild with the change
  BENCH_BASELINE_PROXY=/tmp/mesh-proxy.before BENCH_PEERS=mesh-baseline python3 bench/run.py

BENCH_PEERS (comma-separated: nginx-pair, haproxy-pair, mesh-transparent,
mesh-baseline) limits the peers besides direct and mesh; BENCH_ROUNDS (3) and
BENCH_SECONDS (8) the length. BENCH_WORKERS (1) and BENCH_BASELINE_WORKERS (the same)
set the proxies' worker threads: one binary with two workers against itself with one:

  BENCH_BASELINE_PROXY=target/release/mesh-proxy BENCH_WORKERS=2 \
    BENCH_BASELINE_WORKERS=1 BENCH_PEERS=mesh-baseline python3 bench/run.py
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
import peers  # noqa: E402
import transparent  # noqa: E402
from peers import (HOST, HOST_H2C, TOOLS, free_port, http_get, make_identity, need_tools,
                   start_mesh, start_pair, start_upstream, stop_all, tool, validate, wait_ok)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MESH_BIN_DIR", os.path.join(ROOT, "target", "release"))
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
H2_CLIENTS = int(os.environ.get("BENCH_H2_CLIENTS", "4"))
H2_STREAMS = int(os.environ.get("BENCH_H2_STREAMS", "8"))
TICK = os.sysconf("SC_CLK_TCK")
LOADS = {"h1": f"HTTP/1.1 {CONNS} conns", "h1-1": "HTTP/1.1 1 conn",
         "h2c": f"h2c {H2_CLIENTS}x{H2_STREAMS}"}
PEERS = ("direct", "mesh", "nginx-pair", "haproxy-pair")
# Before/after in one run: another proxy binary as the peer `mesh-baseline`.
BASELINE = os.environ.get("BENCH_BASELINE_PROXY")
# Worker threads per proxy: the mesh's, and the baseline's (to compare one
# binary with one and with two workers).
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
BASELINE_WORKERS = int(os.environ.get("BENCH_BASELINE_WORKERS", str(WORKERS)))
# A subset of the peers (direct and mesh always run), for a quicker A/B.
ONLY = set(filter(None, os.environ.get("BENCH_PEERS", "").split(",")))
CLEANUP = []  # run at exit, after the processes are stopped (network namespaces)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_pids(pid):
    """A process and its direct children (nginx's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid] + [int(c) for c in f.read().split()]
    except OSError:
        return [pid]


def tree_cpu_seconds(pid):
    return sum(cpu_seconds(p) for p in tree_pids(pid))


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def tree_peak_rss_kib(pid):
    """Peak RSS of a process and its children, summed (pages they share count twice)."""
    return sum(peak_rss_kib(p) for p in tree_pids(pid))


def rss_by_mapping(pid):
    """Resident KiB per mapped file (or [heap], [anon], …), largest first."""
    sizes, name = {}, "?"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                name = fields[5] if len(fields) > 5 else "[anon]"
            elif fields[0] == "Rss:":
                sizes[name] = sizes.get(name, 0) + int(fields[1])
    return sorted(sizes.items(), key=lambda kv: -kv[1])


def rss_parts(pid):
    """Current resident memory by kind (KiB): heap and stacks vs. the binary's pages."""
    parts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split()[:2]
                parts[key.rstrip(":")] = int(value)
    return parts


UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def grab(pattern, out, argv):
    m = re.search(pattern, out, re.M)
    if not m:
        sys.exit(f"bench: unexpected output of `{' '.join(argv)}`:\n{out[-3000:]}")
    return m


def run_tool(argv):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=DURATION + 30)
    return p.stdout + p.stderr


def wrk_argv(port, conns, host=None, url=None, prefix=()):
    """wrk against 127.0.0.1:port, or `url` run under `prefix` (inside a namespace)."""
    return (list(prefix) + ["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency"]
            + (["-H", f"Host: {host}"] if host else []) + [url or f"http://127.0.0.1:{port}/"])


def wrk(port, conns, host=None, url=None, prefix=()):
    argv = wrk_argv(port, conns, host, url, prefix)
    out = run_tool(argv)
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(val) * UNIT[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(grab(r"Requests/sec:\s+([\d.]+)", out, argv).group(1)),
        "p50": lat.get("50", 0.0),
        "p99": lat.get("99", 0.0),
        "requests": int(grab(r"(\d+) requests in", out, argv).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else "",
    }


def h2load_argv(port, authority=None):
    """h2c with prior knowledge (an http:// URL); -H ':authority: …' replaces the URL's."""
    return (["h2load", "-c", str(H2_CLIENTS), "-m", str(H2_STREAMS), "-D", str(DURATION)]
            + (["-H", f":authority: {authority}"] if authority else [])
            + [f"http://127.0.0.1:{port}/"])


def h2load(port, authority=None):
    argv = h2load_argv(port, authority)
    out = run_tool(argv)
    done = grab(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                r"(\d+) errored, (\d+) timeout", out, argv).groups()
    codes = [int(n) for n in grab(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx",
                                  out, argv).groups()]
    t = grab(r"time for request:" + r"\s+([\d.]+)(us|ms|s)" * 4, out, argv).groups()
    lat = [float(t[i]) * UNIT[t[i + 1]] for i in range(0, 8, 2)]
    return {
        "rps": float(grab(r"finished in \S+, ([\d.]+) req/s", out, argv).group(1)),
        "requests": int(done[1]),  # succeeded: h2load's req/s counts these
        "failed": int(done[2]), "errored": int(done[3]), "timeout": int(done[4]),
        "errors": sum(codes[1:]),  # non-2xx
        "min": lat[0], "max": lat[1], "mean": lat[2], "sd": lat[3],
    }


def measure(peer, load, upstream_pid):
    """One bounded load against one peer, with the CPU its processes and the upstream used."""
    cpu = lambda: sum(tree_cpu_seconds(p) for p in peer["pids"])
    upstream_pid = peer.get("upstream", upstream_pid)
    before, up_before = cpu(), tree_cpu_seconds(upstream_pid)
    if load == "h2c":
        res = h2load(peer["h2c"], peer["authority"])
    else:
        res = wrk(peer["h1"], CONNS if load == "h1" else 1, peer["host"], peer.get("url"),
                  peer.get("prefix", ()))
    res["cpu"] = cpu() - before
    res["upstream_cpu"] = tree_cpu_seconds(upstream_pid) - up_before
    return res


def describe(res, load):
    cpu = f"cpu {res['cpu'] / max(res['requests'], 1) * 1e6:6.1f} us/req"
    if load == "h2c":
        return (f"{res['rps']:9.0f} req/s  mean {res['mean'] * 1e6:7.0f} us  sd {res['sd'] * 1e6:6.0f} us  "
                f"max {res['max'] * 1e6:7.0f} us  {cpu}  non-2xx {res['errors']}  failed {res['failed']}")
    return (f"{res['rps']:9.0f} req/s  p50 {res['p50'] * 1e6:7.0f} us  p99 {res['p99'] * 1e6:7.0f} us  "
            f"{cpu}  non-2xx {res['errors']}  {res['socket_errors']}")


def med(runs, key):
    vals = sorted(x[key] for x in runs)
    return vals[len(vals) // 2] if vals else None


def per_req_us(runs, key="cpu"):
    reqs = sum(x["requests"] for x in runs)
    return sum(x[key] for x in runs) / reqs * 1e6 if reqs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, spec, width):
    return f"{'-':>{width}}" if v is None else f"{v:{width}{spec}}"


def ratio_table(results, rss):
    """The mesh against both reference pairs, with the targets of issue 16."""
    runs = lambda load, peer: results[load].get(peer, [])
    d1 = med(runs("h1-1", "direct"), "p50")
    added = lambda p: None if d1 is None or not runs("h1-1", p) else (med(runs("h1-1", p), "p50") - d1) * 1e6
    cols = ("mesh", "nginx-pair", "haproxy-pair")
    rows = [  # label, {peer: value}, format, (target, check of (mesh, nginx pair, HAProxy pair))
        (f"{LOADS['h1']}: req/s", {p: med(runs("h1", p), "rps") for p in cols}, ".0f", None),
        (f"{LOADS['h1']}: CPU us/req", {p: per_req_us(runs("h1", p)) for p in cols}, ".1f",
         ("mesh <= 0.65 x nginx pair", lambda m, n, h: m <= 0.65 * n)),
        (f"{LOADS['h1-1']}: added p50 us", {p: added(p) for p in cols}, ".0f",
         ("mesh <= nginx pair", lambda m, n, h: m <= n)),
        (f"{LOADS['h1-1']}: CPU us/req", {p: per_req_us(runs("h1-1", p)) for p in cols}, ".1f",
         ("mesh <= 0.9 x nginx pair", lambda m, n, h: m <= 0.9 * n)),
        (f"{LOADS['h2c']}: req/s", {p: med(runs("h2c", p), "rps") for p in cols}, ".0f",
         ("mesh >= 1.2 x HAProxy pair", lambda m, n, h: m >= 1.2 * h)),
        (f"{LOADS['h2c']}: CPU us/req", {p: per_req_us(runs("h2c", p)) for p in cols}, ".1f",
         ("mesh <= 0.65 x HAProxy pair", lambda m, n, h: m <= 0.65 * h)),
        ("peak RSS both hops MiB", {p: rss.get(p) for p in cols}, ".1f",
         ("mesh <= 12 MiB", lambda m, n, h: m <= 12)),
    ]
    print()
    print(f"{'':30}{'mesh':>9}{'nginx pair':>12}{'HAProxy pair':>14}{'mesh/nginx':>12}"
          f"{'mesh/HAProxy':>14}  target (issue 16)")
    for label, v, spec, target in rows:
        m, n, h = (v[p] for p in cols)
        line = (f"{label:30}{fmt(m, spec, 9)}{fmt(n, spec, 12)}{fmt(h, spec, 14)}"
                f"{fmt(ratio(m, n), '.2f', 12)}{fmt(ratio(m, h), '.2f', 14)}")
        if target:
            text, check = target
            try:
                mark = "met" if check(m, n, h) else "NOT met"
            except TypeError:  # a value was not measured
                mark = "n/a"
            line += f"  {text}: {mark}"
        print(line)


def report(results, all_peers, upstream_pid):
    runs = lambda load, peer: results[load].get(peer, [])
    print()
    print(f"{'':28}{'direct':>12}{'mesh':>12}{'ratio':>10}")
    d_rps, m_rps = med(runs("h1", "direct"), "rps"), med(runs("h1", "mesh"), "rps")
    print(f"{f'req/s ({CONNS} conns, median)':28}{d_rps:12.0f}{m_rps:12.0f}{m_rps / d_rps:10.2f}")
    for load, key in (("h1", "p50"), ("h1", "p99"), ("h1-1", "p50")):
        d, m = med(runs(load, "direct"), key) * 1e6, med(runs(load, "mesh"), key) * 1e6
        label = f"{key} us ({CONNS} conns)" if load == "h1" else f"{key} us (1 conn)"
        print(f"{label:28}{d:12.0f}{m:12.0f}{m / max(d, 1e-9):10.2f}")
    d1 = med(runs("h1-1", "direct"), "p50")
    for name in all_peers:
        if name in PEERS[1:] + ("mesh-baseline",):
            print(f"added median latency at 1 connection, {name}: {(med(runs('h1-1', name), 'p50') - d1) * 1e6:.0f} us")
    for name in ("direct", "mesh"):
        print(f"nginx (upstream) CPU per request, {name}, {LOADS['h1']}: "
              f"{per_req_us(runs('h1', name), 'upstream_cpu'):.1f} us")
    for load in LOADS:
        for name in PEERS[1:] + ("mesh-baseline",):
            r = runs(load, name)
            if r:
                print(f"{name} CPU per request, {LOADS[load]}: {per_req_us(r):.1f} us "
                      f"({sum(x['cpu'] for x in r):.2f} CPU s for {sum(x['requests'] for x in r)} requests)")
    if results["h2c"]:
        print(f"\n{LOADS['h2c'] + ' (h2load, medians)':30}{'req/s':>12}{'mean us':>10}{'sd us':>8}"
              f"{'max us':>9}{'failed':>8}{'non-2xx':>9}")
        for name in [p for p in PEERS + ("mesh-baseline",) if p in all_peers]:
            r = runs("h2c", name)
            if r:
                print(f"  {name:28}{med(r, 'rps'):12.0f}{med(r, 'mean') * 1e6:10.0f}{med(r, 'sd') * 1e6:8.0f}"
                      f"{med(r, 'max') * 1e6:9.0f}{sum(x['failed'] for x in r):8}{sum(x['errors'] for x in r):9}")
            else:
                print(f"  {name:28}  skipped (no h2c)")
    for name, pid in all_peers["mesh"]["names"].items():
        parts = rss_parts(pid)
        print(f"{name} peak RSS: {peak_rss_kib(pid) / 1024:.1f} MiB "
              f"(now: anon {parts.get('RssAnon', 0) / 1024:.1f}, "
              f"file {parts.get('RssFile', 0) / 1024:.1f})")
        if os.environ.get("MESH_BENCH_SMAPS"):
            for path, kib in rss_by_mapping(pid)[:8]:
                print(f"    {kib / 1024:5.1f} MiB  {path}")
    errors = sum(x["errors"] + x.get("failed", 0) for load in LOADS for x in runs(load, "mesh"))
    print(f"mesh non-2xx or failed responses: {errors}")
    # Both hops: the two proxies; for nginx, master and worker of each hop; for HAProxy
    # (-db, no master) one process per hop.
    rss = {"mesh": sum(peak_rss_kib(p) for p in all_peers["mesh"]["pids"]) / 1024}
    for name in ("nginx-pair", "haproxy-pair"):
        if name in all_peers:
            rss[name] = sum(tree_peak_rss_kib(p) for p in all_peers[name]["pids"]) / 1024
    ratio_table(results, rss)
    if "mesh-baseline" in all_peers:
        baseline_table(results, all_peers)
    if "mesh-transparent" in all_peers:
        transparent_table(results, all_peers)


def baseline_table(results, all_peers):
    """This build's proxy against BENCH_BASELINE_PROXY, same run."""
    runs = lambda load, peer: results[load].get(peer, [])
    d1 = med(runs("h1-1", "direct"), "p50")
    added = lambda peer: (med(runs("h1-1", peer), "p50") - d1) * 1e6
    rss = lambda peer: sum(peak_rss_kib(p) for p in all_peers[peer]["pids"]) / 1024
    print()
    print(f"this proxy ({WORKERS} worker(s)) against the baseline proxy ({BASELINE}, "
          f"{BASELINE_WORKERS} worker(s)), same run:")
    print(f"{'':30}{'mesh':>10}{'baseline':>10}{'ratio':>8}")
    rows = [(f"{LOADS[load]}: {what}", get(load, "mesh"), get(load, "mesh-baseline"), spec)
            for load in LOADS if runs(load, "mesh")
            for what, get, spec in (("req/s", lambda l, p: med(runs(l, p), "rps"), ".0f"),
                                    ("CPU us/req", lambda l, p: per_req_us(runs(l, p)), ".1f"))]
    rows.append((f"{LOADS['h1-1']}: added p50 us", added("mesh"), added("mesh-baseline"), ".0f"))
    rows.append(("peak RSS both hops MiB", rss("mesh"), rss("mesh-baseline"), ".1f"))
    for label, m, b, spec in rows:
        print(f"{label:30}{fmt(m, spec, 10)}{fmt(b, spec, 10)}{fmt(ratio(m, b), '.2f', 8)}")


def transparent_table(results, all_peers):
    """The transparent mode beside the explicit one (each against its own direct path)."""
    runs = lambda load, peer: results[load].get(peer, [])
    added = lambda peer, direct: (med(runs("h1-1", peer), "p50") - med(runs("h1-1", direct), "p50")) * 1e6
    rss = sum(peak_rss_kib(p) for p in all_peers["mesh-transparent"]["pids"]) / 1024
    explicit_rss = sum(peak_rss_kib(p) for p in all_peers["mesh"]["pids"]) / 1024
    print()
    print("transparent mode (pods in network namespaces, iptables REDIRECT, veths and a bridge;")
    print("its direct path is wrk -> server pod over the same veths, not captured):")
    print(f"{'':30}{'transparent':>12}{'explicit':>10}{'ratio':>8}")
    rows = [
        (f"{LOADS['h1']}: req/s", med(runs("h1", "mesh-transparent"), "rps"), med(runs("h1", "mesh"), "rps"), ".0f"),
        (f"{LOADS['h1']}: CPU us/req", per_req_us(runs("h1", "mesh-transparent")), per_req_us(runs("h1", "mesh")), ".1f"),
        (f"{LOADS['h1-1']}: added p50 us", added("mesh-transparent", "direct-veth"), added("mesh", "direct"), ".0f"),
        (f"{LOADS['h1-1']}: CPU us/req", per_req_us(runs("h1-1", "mesh-transparent")), per_req_us(runs("h1-1", "mesh")), ".1f"),
        ("peak RSS both hops MiB", rss, explicit_rss, ".1f"),
    ]
    for label, t, e, spec in rows:
        print(f"{label:30}{fmt(t, spec, 12)}{fmt(e, spec, 10)}{fmt(ratio(t, e), '.2f', 8)}")
    print(f"direct-veth req/s ({LOADS['h1']}): {med(runs('h1', 'direct-veth'), 'rps'):.0f}")
    errors = sum(x["errors"] for load in ("h1", "h1-1") for x in runs(load, "mesh-transparent"))
    print(f"mesh-transparent non-2xx responses: {errors}")


def main():
    need_tools(TOOLS)
    for b in ("mesh", "mesh-proxy", "mesh-identity", "mesh-controller"):
        if not os.path.exists(os.path.join(BIN, b)):
            sys.exit(f"bench: {BIN}/{b} missing; run `cargo build --release --bins` (make bench does)")
    work = tempfile.mkdtemp(prefix="mesh-bench-")
    ident = os.path.join(work, "identity")
    manifests = os.path.join(work, "manifests")
    os.makedirs(manifests)
    make_identity(ident, BIN)
    h2c = peers.nginx_h2c(tool("nginx"))
    if not h2c:
        print("bench: this nginx has no HTTP/2 module: h2c skipped for direct, mesh (its upstream "
              "would need h2c) and the nginx pair")

    upstream, app_port, app_h2c_port = start_upstream(work, tool("nginx"), h2c)
    if h2c:
        wait_ok(app_h2c_port, "/", what="h2c upstream", h2c=True)
    all_peers = {
        "direct": {"h1": app_port, "h2c": app_h2c_port, "host": None, "authority": None, "pids": []},
        "mesh": start_mesh(BIN, work, ident, manifests, app_port, app_h2c_port, WORKERS),
    }
    for name, kind in (("nginx-pair", "nginx"), ("haproxy-pair", "haproxy")):
        if not ONLY or name in ONLY:
            all_peers[name] = start_pair(kind, work, ident, app_port, h2c or kind == "haproxy")
    if BASELINE:
        all_peers["mesh-baseline"] = start_baseline(work, app_port, app_h2c_port)
    names = list(all_peers)
    why_not = transparent.available() or (
        "BENCH_TRANSPARENT=0" if os.environ.get("BENCH_TRANSPARENT") == "0" else None) or (
        "not in BENCH_PEERS" if ONLY and "mesh-transparent" not in ONLY else None)
    if why_not:
        print(f"bench: transparent mode skipped: {why_not}")
    else:
        entries, tp_upstream, namespaces = transparent.start(BIN, work, ident, tool("nginx"))
        CLEANUP.append(namespaces.close)
        for entry in entries.values():
            entry["upstream"] = tp_upstream.pid
        all_peers.update(entries)
        names += list(entries)
    runs = sum(1 for p in names for load in LOADS if load != "h2c" or all_peers[p]["h2c"])
    print(f"bench: {ROUNDS} interleaved rounds of wrk -t1 -c{CONNS}, wrk -t1 -c1 (-d{DURATION}s) and "
          f"h2load -c {H2_CLIENTS} -m {H2_STREAMS} -D {DURATION} against {', '.join(names)} "
          f"(~{ROUNDS * runs * DURATION / 60:.0f} min); mesh proxies {WORKERS} worker(s) each"
          + (f", baseline {BASELINE_WORKERS}" if BASELINE else "") + f"; logs in {work}")
    results = {load: {} for load in LOADS}
    for r in range(ROUNDS):
        # Rotated each round: the peer measured right after another one fares
        # differently (caches, frequency), so no peer keeps one place.
        order = names[r % len(names):] + names[:r % len(names)]
        for load in LOADS:
            for name in order:
                peer = all_peers[name]
                if load == "h2c" and not peer["h2c"]:
                    continue
                res = measure(peer, load, upstream.pid)
                results[load].setdefault(name, []).append(res)
                print(f"  round {r + 1} {LOADS[load]:17} {name:12}: {describe(res, load)}")
    report(results, all_peers, upstream.pid)


def start_baseline(work, app_port, app_h2c_port):
    """A second mesh whose proxies run BENCH_BASELINE_PROXY (the rest from BIN)."""
    if not os.access(BASELINE, os.X_OK):
        sys.exit(f"bench: BENCH_BASELINE_PROXY={BASELINE} is not an executable")
    work = os.path.join(work, "baseline")  # its own logs and identity
    bins, ident = os.path.join(work, "bin"), os.path.join(work, "identity")
    manifests = os.path.join(work, "manifests")
    os.makedirs(bins)
    os.makedirs(manifests)
    for b in ("mesh", "mesh-identity", "mesh-controller"):
        os.symlink(os.path.join(BIN, b), os.path.join(bins, b))
    os.symlink(os.path.abspath(BASELINE), os.path.join(bins, "mesh-proxy"))
    make_identity(ident, BIN)
    return start_mesh(bins, work, ident, manifests, app_port, app_h2c_port, BASELINE_WORKERS)


def check_config():
    """Every config written to a temp dir and validated; no process is started."""
    need_tools(("nginx", "haproxy", "openssl"))
    nginx, haproxy = tool("nginx"), tool("haproxy")
    work = tempfile.mkdtemp(prefix="mesh-bench-check-")
    ident, manifests = os.path.join(work, "identity"), os.path.join(work, "manifests")
    os.makedirs(manifests)
    print(f"bench --check-config: identity from {make_identity(ident, BIN)}; files in {work}")
    h2c = peers.nginx_h2c(nginx)
    print(f"  nginx h2c (listen … http2 without ssl): {'yes' if h2c else 'no, h2c is skipped for direct, mesh, nginx pair'}")
    p = {k: free_port() for k in ("app", "app_h2c", "n_front", "n_front_h2c", "n_back",
                                  "h_front", "h_front_h2c", "h_back", "inbound", "out")}
    up = peers.upstream_conf(work, p["app"], p["app_h2c"] if h2c else None)
    ngx = peers.nginx_pair_confs(work, ident, p["app"], p["n_front"], p["n_back"],
                                 p["n_front_h2c"] if h2c else None)
    hap = peers.haproxy_pair_confs(work, ident, p["app"], p["h_front"], p["h_back"], p["h_front_h2c"])
    manifest = peers.mesh_manifest(manifests, p["app"], p["inbound"], p["app_h2c"] if h2c else None)
    checks = [(f"nginx -t {c}", peers.check_nginx(nginx, c, work)) for c in [up] + ngx]
    checks += [(f"haproxy -c -f {c}", peers.check_haproxy(haproxy, c)) for c in hap]
    mesh = os.path.join(BIN, "mesh")
    if os.path.exists(mesh):  # the controller's manifest parser, through the CLI
        out = subprocess.run([mesh, "authz", "bench-1", "-n", "demo", "--local", manifests],
                             capture_output=True, text=True)
        ports = [str(p["app"])] + ([str(p["app_h2c"])] if h2c else [])
        ok = out.returncode == 0 and all(port in out.stdout for port in ports)
        checks.append((f"mesh authz --local {manifest}",
                       (ok, f"WorkloadEntry bench-1 parsed with ports {', '.join(ports)}" if ok
                        else out.stdout + out.stderr)))
    good = validate(checks)
    print("  loads a run would start (ports are examples):")
    for peer, port, host, authority in (("direct", p["app"], None, None),
                                        ("mesh", p["out"], HOST, HOST_H2C),
                                        ("nginx-pair", p["n_front"], None, None),
                                        ("haproxy-pair", p["h_front"], None, None)):
        h2c_port = {"direct": p["app_h2c"], "mesh": p["out"], "nginx-pair": p["n_front_h2c"],
                    "haproxy-pair": p["h_front_h2c"]}[peer]
        print(f"    {peer:12} " + shlex.join(wrk_argv(port, CONNS, host)))
        print(f"    {peer:12} " + (shlex.join(h2load_argv(h2c_port, authority))
                                    if h2c or peer == "haproxy-pair" else "h2c skipped"))
    if good:
        shutil.rmtree(work)
    return 0 if good else 1


def smoke():
    """The upstream and both reference pairs started, one request through each, stopped."""
    need_tools(("nginx", "haproxy", "openssl"))
    work = tempfile.mkdtemp(prefix="mesh-bench-smoke-")
    ident = os.path.join(work, "identity")
    make_identity(ident, BIN)
    h2c = peers.nginx_h2c(tool("nginx"))
    _, app_port, app_h2c_port = start_upstream(work, tool("nginx"), h2c)
    print(f"bench --smoke: logs in {work}")
    print(f"  direct       HTTP/1.1 {http_get(app_port, '/')[0]}"
          + (f", h2c {peers.h2c_status(app_h2c_port, f'127.0.0.1:{app_h2c_port}')}" if h2c else ""))
    for kind in ("nginx", "haproxy"):
        peer = start_pair(kind, work, ident, app_port, h2c or kind == "haproxy")
        line = f"  {kind + ' pair':12} HTTP/1.1 {http_get(peer['h1'], '/')[0]}"
        if peer["h2c"]:
            line += f", h2c {peers.h2c_status(peer['h2c'], '127.0.0.1')}"
        print(line)
    return 0


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--check-config", action="store_true",
                      help="write every config into a temp dir and validate it (nginx -t, haproxy -c); no load")
    args.add_argument("--smoke", action="store_true",
                      help="start the upstream and the reference pairs, send one request each, stop; no load")
    opts = args.parse_args()
    try:
        if opts.check_config:
            sys.exit(check_config())
        if opts.smoke:
            sys.exit(smoke())
        main()
    finally:
        stop_all()
        for cleanup in CLEANUP:
            cleanup()
