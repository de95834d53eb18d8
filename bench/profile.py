#!/usr/bin/env python3
"""`make profile`: the mesh pair of `make bench` under one load, recorded with `perf`.

Starts the upstream nginx, identity, controller and the two proxies (the proxy from
target/profiling, built with symbols by `cargo build --profile profiling -p mesh-proxy`;
the rest from target/release), runs wrk (BENCH_CONNECTIONS connections, default 1) or
h2load (PROFILE_LOAD=h2c) for PROFILE_SECONDS (15) while `perf record -g` samples both
proxies, and prints the hottest symbols of each. Loopback only; stops what it started.
"""

import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
import peers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
PROFILING = os.path.join(ROOT, "target", "profiling", "mesh-proxy")
SECONDS = int(os.environ.get("PROFILE_SECONDS", "15"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "1"))
LOAD = os.environ.get("PROFILE_LOAD", "h1")
# `dwarf` unwinds through libraries built without frame pointers (libc's memmove).
CALL_GRAPH = os.environ.get("PROFILE_CALL_GRAPH", "fp")


def main():
    peers.need_tools(["wrk", "nginx", "openssl", "perf"] + (["h2load"] if LOAD == "h2c" else []))
    if not os.path.exists(PROFILING):
        sys.exit("profile: build the proxy with symbols first: "
                 "cargo build --profile profiling -p mesh-proxy (make profile does)")
    work = tempfile.mkdtemp(prefix="mesh-profile-")
    bins = os.path.join(work, "bin")
    os.makedirs(bins)
    for b in ("mesh", "mesh-identity", "mesh-controller"):
        os.symlink(os.path.join(RELEASE, b), os.path.join(bins, b))
    os.symlink(PROFILING, os.path.join(bins, "mesh-proxy"))
    ident, manifests = os.path.join(work, "identity"), os.path.join(work, "manifests")
    os.makedirs(manifests)
    peers.make_identity(ident, bins)
    h2c = LOAD == "h2c"
    _, app_port, app_h2c = peers.start_upstream(work, peers.tool("nginx"), h2c)
    mesh = peers.start_mesh(bins, work, ident, manifests, app_port, app_h2c)
    data = os.path.join(work, "perf.data")
    pids = ",".join(str(p) for p in mesh["pids"])
    perf = subprocess.Popen(["perf", "record", "--call-graph", CALL_GRAPH, "-F", "2000", "-o", data, "-p", pids,
                             "--", "sleep", str(SECONDS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if h2c:
        load = ["h2load", "-c", "4", "-m", "8", "-D", str(SECONDS), "-H",
                f":authority: {mesh['authority']}", f"http://127.0.0.1:{mesh['h2c']}/"]
    else:
        load = ["wrk", "-t1", f"-c{CONNS}", f"-d{SECONDS}s", "-H", f"Host: {mesh['host']}",
                f"http://127.0.0.1:{mesh['h1']}/"]
    out = subprocess.run(load, capture_output=True, text=True, timeout=SECONDS + 30).stdout
    print("\n".join(l for l in out.splitlines() if "Requests/sec" in l or "finished in" in l))
    perf.wait(timeout=SECONDS + 30)
    for name, pid in mesh["names"].items():
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--pid", str(pid),
                                 "--stdio", "--percent-limit", "0.8", "-g", "none",
                                 "--sort", "symbol"],
                                capture_output=True, text=True).stdout
        rows = [l for l in report.splitlines() if l.strip() and not l.startswith("#")]
        print(f"\n== {name} (pid {pid}), self time ==")
        print("\n".join(rows[:40]))
    print(f"\nperf data: {data} (perf report -i {data})")


if __name__ == "__main__":
    try:
        main()
    finally:
        peers.stop_all()
