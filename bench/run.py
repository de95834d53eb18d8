#!/usr/bin/env python3
"""`make bench`: a proxy pair against a direct connection, same run, interleaved.

client (wrk) -> outbound proxy -> mTLS -> inbound proxy -> nginx
client (wrk) -> nginx
client (wrk) -> nginx (proxy) -> mTLS -> nginx (proxy) -> nginx   (the reference pair)

Each proxy runs one worker thread. Prints requests/s, p50/p99 latency, the
proxies' CPU seconds per request (also against the nginx pair doing the same
job: HTTP/1.1 in, mutual TLS 1.3 with certificates of the mesh's CA between
the two, pooled keep-alive connections, one worker each) and peak RSS. Everything
runs on loopback; every load is bounded in time; only processes this script
started are stopped, by PID.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MESH_BIN_DIR", os.path.join(ROOT, "target", "release"))
HOST = "bench.demo.svc.cluster.local"
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
TICK = os.sysconf("SC_CLK_TCK")
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn(name, argv, env=None, log_dir="."):
    log = open(os.path.join(log_dir, name + ".log"), "w")
    p = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_port(port, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: {what} did not listen on {port}")


def http_get(port, path, host=None, timeout=2):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", path, headers={"Host": host} if host else {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def wait_ok(port, path, host=None, what=""):
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if http_get(port, path, host)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"bench: {what} never answered 200")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu_seconds(pid):
    """CPU seconds of a process and its direct children (nginx's workers)."""
    total = cpu_seconds(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for child in f.read().split():
                total += cpu_seconds(int(child))
    except OSError:
        pass
    return total


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


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


def wrk(port, conns, host=None):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency", f"http://127.0.0.1:{port}/"]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=DURATION + 30).stdout
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(val) * UNIT[unit]
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": lat.get("50", 0.0),
        "p99": lat.get("99", 0.0),
        "requests": total,
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else "",
    }


def issue_cert(work, ident, name):
    """A certificate for `name` from the mesh's issuer (openssl), as chain and key files."""
    key, csr, crt = (os.path.join(work, f"{name}.{ext}") for ext in ("key", "csr", "crt"))
    ext = os.path.join(work, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-subj", f"/CN={name}", "-out", csr)
    run("openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(ident, "issuer.crt"),
        "-CAkey", os.path.join(ident, "issuer.key"), "-CAcreateserial", "-days", "1",
        "-extfile", ext, "-out", crt)
    chain = os.path.join(work, f"{name}.pem")
    with open(chain, "w") as out:
        for part in (crt, os.path.join(ident, "issuer.crt")):
            with open(part) as f:
                out.write(f.read())
    return chain, key


def nginx_pair(work, ident, nginx, app_port):
    """Two nginx reverse proxies doing the mesh's job; returns (front port, procs)."""
    anchors = os.path.join(ident, "trust-anchors.pem")
    front, back = free_port(), free_port()
    a_pem, a_key = issue_cert(work, ident, "nginx-a")
    b_pem, b_key = issue_cert(work, ident, "nginx-b")
    head = "worker_processes 1; daemon off; pid {work}/{n}.pid; error_log {work}/{n}-error.log;\n" \
           "events {{ worker_connections 1024; }}\n"
    confs = {
        "nginx-a": head.format(work=work, n="nginx-a") + f"""http {{ access_log off; keepalive_requests 1000000;
  upstream b {{ server 127.0.0.1:{back}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{front};
    location / {{ proxy_pass https://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate {a_pem}; proxy_ssl_certificate_key {a_key};
      proxy_ssl_trusted_certificate {anchors}; proxy_ssl_verify on; proxy_ssl_verify_depth 3;
      proxy_ssl_name nginx-b; proxy_ssl_protocols TLSv1.3; }} }} }}
""",
        "nginx-b": head.format(work=work, n="nginx-b") + f"""http {{ access_log off; keepalive_requests 1000000;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{back} ssl; ssl_protocols TLSv1.3;
    ssl_certificate {b_pem}; ssl_certificate_key {b_key};
    ssl_client_certificate {anchors}; ssl_verify_client on; ssl_verify_depth 3;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""",
    }
    procs = []
    for n, text in confs.items():
        conf = os.path.join(work, f"{n}.conf")
        with open(conf, "w") as f:
            f.write(text)
        procs.append(spawn(n, [nginx, "-c", conf, "-p", work], log_dir=work))
    wait_port(back, "nginx-b")
    wait_port(front, "nginx-a")
    wait_ok(front, "/", what="request through the nginx pair")
    return front, procs


def main():
    for tool in ("wrk", "nginx", "openssl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"bench: {tool} is missing; install it with `apt-get install -y wrk nginx-light openssl`")
    for b in ("mesh-proxy", "mesh-identity", "mesh-controller"):
        if not os.path.exists(os.path.join(BIN, b)):
            sys.exit(f"bench: {BIN}/{b} missing; run `cargo build --release --bins` (make bench does)")

    work = tempfile.mkdtemp(prefix="mesh-bench-")
    ident = os.path.join(work, "identity")
    manifests = os.path.join(work, "manifests")
    os.makedirs(manifests)
    subprocess.run([os.path.join(BIN, "mesh"), "identity", "init", ident], check=True,
                   stdout=subprocess.DEVNULL)

    # nginx: one worker, a fixed 200 answer, keep-alive.
    nginx_port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{nginx_port}; location / {{ return 200 "ok\\n"; }} }} }}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx_proc = spawn("nginx", [nginx, "-c", conf, "-p", work], log_dir=work)
    wait_port(nginx_port, "nginx")

    pair_port, pair_procs = nginx_pair(work, ident, nginx, nginx_port)

    id_port, ctl_port = free_port(), free_port()
    spawn("identity", [os.path.join(BIN, "mesh-identity"), "--dir", ident, "--addr",
                       f"127.0.0.1:{id_port}", "--admin-addr", f"127.0.0.1:{free_port()}"], log_dir=work)
    def token(sa, ns="demo"):
        return subprocess.run([os.path.join(BIN, "mesh"), "token", "--namespace", ns,
                               "--service-account", sa, "--key", os.path.join(ident, "token.key")],
                              check=True, capture_output=True, text=True).stdout.strip()

    # The controller serves over mutual TLS with a certificate from identity.
    spawn("controller", [os.path.join(BIN, "mesh-controller"), "--source", f"dir:{manifests}",
                         "--grpc-addr", f"127.0.0.1:{ctl_port}", "--admin-addr",
                         f"127.0.0.1:{free_port()}", "--webhook-addr",
                         f"127.0.0.1:{free_port()}", "--identity-addr", f"127.0.0.1:{id_port}",
                         "--trust-anchors", os.path.join(ident, "trust-anchors.pem")],
          env={"MESH_CONTROLLER_IDENTITY_TOKEN": token("mesh-controller", "mesh-system")},
          log_dir=work)
    wait_port(id_port, "identity")
    wait_port(ctl_port, "controller")

    def proxy(name, sa):
        ports = {k: free_port() for k in ("out", "in", "admin")}
        env = {
            "MESH_PROXY_OUTBOUND_ADDR": f"127.0.0.1:{ports['out']}",
            "MESH_PROXY_INBOUND_ADDR": f"127.0.0.1:{ports['in']}",
            "MESH_PROXY_ADMIN_ADDR": f"127.0.0.1:{ports['admin']}",
            "MESH_PROXY_DESTINATION_ADDR": f"127.0.0.1:{ctl_port}",
            "MESH_PROXY_IDENTITY_ADDR": f"127.0.0.1:{id_port}",
            "MESH_PROXY_TRUST_ANCHORS_FILE": os.path.join(ident, "trust-anchors.pem"),
            "MESH_PROXY_IDENTITY_TOKEN": token(sa),
            "MESH_PROXY_NAMESPACE": "demo",
            "MESH_PROXY_SERVICE_ACCOUNT": sa,
            "MESH_PROXY_WORKER_THREADS": "1",
            "MESH_PROXY_LOG": "warn",
        }
        p = spawn(name, [os.path.join(BIN, "mesh-proxy")], env, log_dir=work)
        wait_ok(ports["admin"], "/ready", what=f"{name} /ready")
        return p, ports

    server, sports = proxy("server-proxy", "server")
    client, cports = proxy("client-proxy", "client")
    with open(os.path.join(manifests, "bench.yaml"), "w") as f:
        f.write(f"""apiVersion: v1
kind: Service
metadata: {{name: bench, namespace: demo}}
spec:
  selector: {{app: bench}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: bench-1, namespace: demo, labels: {{app: bench}}}}
spec:
  address: 127.0.0.1
  serviceAccount: server
  proxyInboundAddress: "127.0.0.1:{sports['in']}"
  ports: {{http: {nginx_port}}}
""")
    wait_ok(cports["out"], "/", HOST, "request through the proxies")

    pids = {"client-proxy": client.pid, "server-proxy": server.pid}
    rows = {"direct": [], "mesh": [], "nginx-pair": []}
    print(f"bench: wrk -t1 -c{CONNS} -d{DURATION}s, {ROUNDS} interleaved rounds; proxies 1 worker each; "
          f"logs in {work}")
    for r in range(ROUNDS):
        for mode in ("direct", "mesh", "nginx-pair"):
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            pair_before = sum(tree_cpu_seconds(p.pid) for p in pair_procs)
            nginx_before = tree_cpu_seconds(nginx_proc.pid)
            if mode == "direct":
                res = wrk(nginx_port, CONNS)
            elif mode == "mesh":
                res = wrk(cports["out"], CONNS, HOST)
            else:
                res = wrk(pair_port, CONNS)
            res["cpu"] = sum(cpu_seconds(p) - before[k] for k, p in pids.items())
            res["pair_cpu"] = sum(tree_cpu_seconds(p.pid) for p in pair_procs) - pair_before
            res["nginx_cpu"] = tree_cpu_seconds(nginx_proc.pid) - nginx_before
            rows[mode].append(res)
            print(f"  round {r + 1} {mode:10}: {res['rps']:9.0f} req/s  p50 {res['p50'] * 1e6:7.0f} us  "
                  f"p99 {res['p99'] * 1e6:7.0f} us  non-2xx {res['errors']}  {res['socket_errors']}")
    one = {"direct": wrk(nginx_port, 1), "mesh": wrk(cports["out"], 1, HOST),
           "nginx-pair": wrk(pair_port, 1)}

    def med(mode, key):
        vals = sorted(x[key] for x in rows[mode])
        return vals[len(vals) // 2]

    d_rps, m_rps = med("direct", "rps"), med("mesh", "rps")
    mesh_reqs = sum(x["requests"] for x in rows["mesh"])
    cpu_per_req = sum(x["cpu"] for x in rows["mesh"]) / max(mesh_reqs, 1)
    print()
    print(f"{'':28}{'direct':>12}{'mesh':>12}{'ratio':>10}")
    print(f"{f'req/s ({CONNS} conns, median)':28}{d_rps:12.0f}{m_rps:12.0f}{m_rps / d_rps:10.2f}")
    for key in ("p50", "p99"):
        d, m = med("direct", key) * 1e6, med("mesh", key) * 1e6
        print(f"{key + f' us ({CONNS} conns)':28}{d:12.0f}{m:12.0f}{m / max(d, 1e-9):10.2f}")
    d1, m1 = one["direct"]["p50"] * 1e6, one["mesh"]["p50"] * 1e6
    print(f"{'p50 us (1 conn)':28}{d1:12.0f}{m1:12.0f}{m1 / max(d1, 1e-9):10.2f}")
    print(f"added median latency at 1 connection: {m1 - d1:.0f} us (proxy pair)")
    n1 = one["nginx-pair"]["p50"] * 1e6
    print(f"added median latency at 1 connection, nginx pair: {n1 - d1:.0f} us")
    for mode in ("direct", "mesh"):
        reqs = sum(x["requests"] for x in rows[mode])
        ngx = sum(x["nginx_cpu"] for x in rows[mode]) / max(reqs, 1)
        print(f"nginx (server) CPU per request, {mode}: {ngx * 1e6:.1f} us")
    print(f"proxy pair CPU per request: {cpu_per_req * 1e6:.1f} us "
          f"({sum(x['cpu'] for x in rows['mesh']):.2f} CPU s for {mesh_reqs} requests)")
    pair_reqs = sum(x["requests"] for x in rows["nginx-pair"])
    pair_cpu = sum(x["pair_cpu"] for x in rows["nginx-pair"]) / max(pair_reqs, 1)
    print(f"nginx pair CPU per request: {pair_cpu * 1e6:.1f} us "
          f"(req/s {med('nginx-pair', 'rps'):.0f}); mesh / nginx pair: "
          f"{cpu_per_req / max(pair_cpu, 1e-12):.2f} (target <= 0.8)")
    for name, pid in pids.items():
        parts = rss_parts(pid)
        print(f"{name} peak RSS: {peak_rss_kib(pid) / 1024:.1f} MiB "
              f"(now: anon {parts.get('RssAnon', 0) / 1024:.1f}, "
              f"file {parts.get('RssFile', 0) / 1024:.1f})")
        if os.environ.get("MESH_BENCH_SMAPS"):
            for path, kib in rss_by_mapping(pid)[:8]:
                print(f"    {kib / 1024:5.1f} MiB  {path}")
    errors = sum(x["errors"] for x in rows["mesh"]) + one["mesh"]["errors"]
    print(f"mesh non-2xx responses: {errors}")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
