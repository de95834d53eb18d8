"""The peers bench/run.py measures, started and checked; run.py drives the load.

The upstream nginx answers every request itself. The reference pairs do the
mesh's job with the mesh CA's certificates: HTTP/1.1 (or h2c) in on loopback,
mutual TLS 1.3 between the two hops (the front verifies the back's name against
the trust anchors, the back requires a client certificate), pooled keep-alive
connections, one worker thread each, plain HTTP/1.1 to the upstream, no logging.
Every process started here is recorded in `procs` and stopped by `stop_all()`.
"""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

# The mesh reaches the upstream's HTTP/1.1 port as Service `bench` and its h2c
# port as Service `bench-h2`: the server proxy speaks HTTP/2 (prior knowledge) to
# the application for requests that were HTTP/2 at the origin, and nginx < 1.25
# serves h2c only on a listener of its own.
NAMESPACE = "demo"
HOST = f"bench.{NAMESPACE}.svc.cluster.local"
HOST_H2C = f"bench-h2.{NAMESPACE}.svc.cluster.local"


# === Processes ===

# Tool -> the Debian package that has it.
TOOLS = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "h2load": "nghttp2-client",
         "openssl": "openssl"}
APT = "apt-get install -y wrk nginx-light haproxy nghttp2-client openssl"
procs = []


def tool(name):
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)


def need_tools(names):
    missing = [n for n in names if not tool(n)]
    if missing:
        sys.exit("bench: missing " + ", ".join(f"{n} (package {TOOLS[n]})" for n in missing)
                 + f"; install with `{APT}`")


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


def wait_ok(port, path, host=None, what="", h2c=False):
    """Until a GET answers 200: HTTP/1.1, or h2c with `host` as :authority."""
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if h2c and h2c_status(port, host or f"127.0.0.1:{port}") == 200:
                return
            if not h2c and http_get(port, path, host)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"bench: {what} never answered 200")


def validate(checks):
    """`checks`: (label, (ok, output)) pairs; prints each, returns True when all passed."""
    good = True
    for label, (ok, output) in checks:
        last = output.splitlines()[-1] if output else ""
        print(f"  {'ok    ' if ok else 'FAILED'} {label}: {last}")
        if not ok:
            print("    " + output.replace("\n", "\n    "))
            good = False
    return good


def make_identity(ident, bin_dir):
    """The mesh's CA files: from `mesh identity init`, else from openssl."""
    mesh = os.path.join(bin_dir, "mesh")
    if os.path.exists(mesh):
        subprocess.run([mesh, "identity", "init", ident], check=True, stdout=subprocess.DEVNULL)
        return f"{mesh} identity init"
    test_identity(ident)
    return f"openssl (no {mesh})"


# === Files ===

def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def openssl(*argv):
    subprocess.run(("openssl",) + argv, check=True, capture_output=True)


def test_identity(ident):
    """A throwaway trust anchor and issuer laid out like `mesh identity init`'s (for
    --check-config without a release build)."""
    os.makedirs(ident)
    p = lambda name: os.path.join(ident, name)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", p("anchor.key"), "-subj", "/CN=root.cluster.local",
            "-days", "1", "-out", p("trust-anchors.pem"))
    write(p("issuer.ext"), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n")
    openssl("req", "-new", *ec, "-keyout", p("issuer.key"), "-subj", "/CN=issuer", "-out", p("issuer.csr"))
    openssl("x509", "-req", "-in", p("issuer.csr"), "-CA", p("trust-anchors.pem"), "-CAkey",
            p("anchor.key"), "-CAcreateserial", "-days", "1", "-extfile", p("issuer.ext"),
            "-out", p("issuer.crt"))


def issue_cert(work, ident, name):
    """A certificate for `name` from the mesh's issuer (openssl), as chain and key files."""
    key, csr, crt = (os.path.join(work, f"{name}.{ext}") for ext in ("key", "csr", "crt"))
    ext = write(os.path.join(work, f"{name}.ext"),
                f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-subj", f"/CN={name}", "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", os.path.join(ident, "issuer.crt"),
            "-CAkey", os.path.join(ident, "issuer.key"), "-CAcreateserial", "-days", "1",
            "-extfile", ext, "-out", crt)
    chain = os.path.join(work, f"{name}.pem")
    with open(chain, "w") as out:
        for part in (crt, os.path.join(ident, "issuer.crt")):
            with open(part) as f:
                out.write(f.read())
    return chain, key


# === nginx ===

def nginx_h2c(nginx):
    """True when this nginx can serve h2c (`listen … http2` without ssl, nginx < 1.25)."""
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True)
    return "--with-http_v2_module" in out.stdout + out.stderr


def nginx_head(work, name):
    return (f"worker_processes 1; daemon off; pid {work}/{name}.pid; "
            f"error_log {work}/{name}-error.log;\nevents {{ worker_connections 1024; }}\n")


def upstream_conf(work, port, h2c_port=None):
    """The upstream: one worker, a fixed 200 answer, keep-alive; h2c on a second port."""
    h2c = (f"\n  server {{ listen 127.0.0.1:{h2c_port} http2; location / {{ return 200 \"ok\\n\"; }} }}"
           if h2c_port else "")
    return write(os.path.join(work, "nginx.conf"), nginx_head(work, "nginx") + f"""http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}{h2c} }}
""")


def nginx_pair_confs(work, ident, app_port, front, back, front_h2c=None):
    """nginx-a (HTTP/1.1 in; h2c too on `front_h2c`) -> mTLS 1.3 -> nginx-b -> upstream."""
    anchors = os.path.join(ident, "trust-anchors.pem")
    a_pem, a_key = issue_cert(work, ident, "nginx-a")
    b_pem, b_key = issue_cert(work, ident, "nginx-b")
    to_b = f"""location / {{ proxy_pass https://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate {a_pem}; proxy_ssl_certificate_key {a_key};
      proxy_ssl_trusted_certificate {anchors}; proxy_ssl_verify on; proxy_ssl_verify_depth 3;
      proxy_ssl_name nginx-b; proxy_ssl_protocols TLSv1.3; }}"""
    h2c = f"\n  server {{ listen 127.0.0.1:{front_h2c} http2;\n    {to_b} }}" if front_h2c else ""
    a = nginx_head(work, "nginx-a") + f"""http {{ access_log off; keepalive_requests 1000000;
  upstream b {{ server 127.0.0.1:{back}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{front};
    {to_b} }}{h2c} }}
"""
    b = nginx_head(work, "nginx-b") + f"""http {{ access_log off; keepalive_requests 1000000;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{back} ssl; ssl_protocols TLSv1.3;
    ssl_certificate {b_pem}; ssl_certificate_key {b_key};
    ssl_client_certificate {anchors}; ssl_verify_client on; ssl_verify_depth 3;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""
    return [write(os.path.join(work, f"{n}.conf"), text) for n, text in (("nginx-a", a), ("nginx-b", b))]


def check_nginx(nginx, conf, work):
    out = subprocess.run([nginx, "-t", "-c", conf, "-p", work], capture_output=True, text=True)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


# === HAProxy ===

# One thread, foreground (run with -db; no `daemon`, no `user`/`group`), no `log`
# line anywhere, keep-alive on both sides and idle server connections shared
# between client connections.
HAPROXY_HEAD = """global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
"""


def haproxy_bundle(work, ident, name):
    """HAProxy's `crt` wants the chain and the key in one file."""
    chain, key = issue_cert(work, ident, name)
    with open(chain) as c, open(key) as k:
        return write(os.path.join(work, f"{name}.bundle.pem"), c.read() + k.read())


def haproxy_pair_confs(work, ident, app_port, front, back, front_h2c=None):
    """haproxy-a (HTTP/1.1 in; h2c too on `front_h2c`) -> mTLS 1.3 (HTTP/1.1) -> haproxy-b -> upstream."""
    anchors = os.path.join(ident, "trust-anchors.pem")
    a_pem, b_pem = haproxy_bundle(work, ident, "haproxy-a"), haproxy_bundle(work, ident, "haproxy-b")
    h2c = f"\n    bind 127.0.0.1:{front_h2c} proto h2" if front_h2c else ""
    a = HAPROXY_HEAD + f"""
frontend out
    bind 127.0.0.1:{front}{h2c}
    default_backend b

backend b
    server b 127.0.0.1:{back} ssl crt {a_pem} ca-file {anchors} verify required verifyhost haproxy-b ssl-min-ver TLSv1.3
"""
    b = HAPROXY_HEAD + f"""
frontend in
    bind 127.0.0.1:{back} ssl crt {b_pem} ca-file {anchors} verify required ssl-min-ver TLSv1.3
    default_backend app

backend app
    server app 127.0.0.1:{app_port}
"""
    return [write(os.path.join(work, f"{n}.cfg"), text) for n, text in (("haproxy-a", a), ("haproxy-b", b))]


def check_haproxy(haproxy, conf):
    out = subprocess.run([haproxy, "-c", "-f", conf], capture_output=True, text=True)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


# === The mesh ===

def mesh_manifest(manifests, app_port, inbound_port, app_h2c_port=None):
    """The upstream as a WorkloadEntry behind the server proxy: Service `bench` to its
    HTTP/1.1 port, Service `bench-h2` to its h2c port."""
    h2c_port = f", h2c: {app_h2c_port}" if app_h2c_port else ""
    h2c_svc = f"""---
apiVersion: v1
kind: Service
metadata: {{name: bench-h2, namespace: {NAMESPACE}}}
spec:
  selector: {{app: bench}}
  ports: [{{name: h2c, port: 80, targetPort: h2c, appProtocol: kubernetes.io/h2c}}]
""" if app_h2c_port else ""
    return write(os.path.join(manifests, "bench.yaml"), f"""apiVersion: v1
kind: Service
metadata: {{name: bench, namespace: {NAMESPACE}}}
spec:
  selector: {{app: bench}}
  ports: [{{name: http, port: 80, targetPort: http}}]
{h2c_svc}---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: bench-1, namespace: {NAMESPACE}, labels: {{app: bench}}}}
spec:
  address: 127.0.0.1
  serviceAccount: server
  proxyInboundAddress: "127.0.0.1:{inbound_port}"
  ports: {{http: {app_port}{h2c_port}}}
""")


# === Starting the peers ===

def start_upstream(work, nginx, h2c):
    """The upstream nginx; returns (process, HTTP/1.1 port, h2c port or None)."""
    port, h2c_port = free_port(), (free_port() if h2c else None)
    conf = upstream_conf(work, port, h2c_port)
    proc = spawn("nginx", [nginx, "-c", conf, "-p", work], log_dir=work)
    wait_port(port, "nginx")
    return proc, port, h2c_port


def start_pair(kind, work, ident, app_port, h2c):
    """The nginx or HAProxy pair, configs checked first; returns its peer entry."""
    front, back, front_h2c = free_port(), free_port(), (free_port() if h2c else None)
    if kind == "nginx":
        nginx = tool("nginx")
        confs = nginx_pair_confs(work, ident, app_port, front, back, front_h2c)
        checks = [(f"nginx -t {c}", check_nginx(nginx, c, work)) for c in confs]
        argv = lambda c: [nginx, "-c", c, "-p", work]
    else:
        haproxy = tool("haproxy")
        confs = haproxy_pair_confs(work, ident, app_port, front, back, front_h2c)
        checks = [(f"haproxy -c -f {c}", check_haproxy(haproxy, c)) for c in confs]
        argv = lambda c: [haproxy, "-f", c, "-db"]
    if not all(ok for _, (ok, _) in checks):
        validate(checks)
        sys.exit(f"bench: the {kind} pair's configuration is invalid")
    pids = []
    for conf in reversed(confs):  # the back first
        name = os.path.splitext(os.path.basename(conf))[0]
        pids.append(spawn(name, argv(conf), log_dir=work).pid)
    wait_port(back, f"{kind} back")
    wait_port(front, f"{kind} front")
    wait_ok(front, "/", what=f"request through the {kind} pair")
    if h2c:
        wait_ok(front_h2c, "/", what=f"h2c request through the {kind} pair", h2c=True)
    return {"h1": front, "h2c": front_h2c, "host": None, "authority": None, "pids": pids}


def start_mesh(bin_dir, work, ident, manifests, app_port, app_h2c_port, workers=1):
    """identity, controller, a client and a server proxy (`workers` worker threads
    each); returns the mesh's peer entry."""
    mesh = os.path.join(bin_dir, "mesh")
    id_port, ctl_port = free_port(), free_port()
    spawn("identity", [os.path.join(bin_dir, "mesh-identity"), "--dir", ident, "--addr",
                       f"127.0.0.1:{id_port}", "--admin-addr", f"127.0.0.1:{free_port()}"], log_dir=work)

    def token(sa, ns="demo"):
        return subprocess.run([mesh, "token", "--namespace", ns, "--service-account", sa,
                               "--key", os.path.join(ident, "token.key")],
                              check=True, capture_output=True, text=True).stdout.strip()

    # The controller serves over mutual TLS with a certificate from identity.
    spawn("controller", [os.path.join(bin_dir, "mesh-controller"), "--source", f"dir:{manifests}",
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
            "MESH_PROXY_WORKER_THREADS": str(workers),
            "MESH_PROXY_LOG": "warn",
        }
        p = spawn(name, [os.path.join(bin_dir, "mesh-proxy")], env, log_dir=work)
        wait_ok(ports["admin"], "/ready", what=f"{name} /ready")
        return p, ports

    server, sports = proxy("server-proxy", "server")
    client, cports = proxy("client-proxy", "client")
    mesh_manifest(manifests, app_port, sports["in"], app_h2c_port)
    wait_ok(cports["out"], "/", HOST, "request through the proxies")
    if app_h2c_port:
        wait_ok(cports["out"], "/", HOST_H2C, "h2c request through the proxies", h2c=True)
    return {"h1": cports["out"], "h2c": cports["out"] if app_h2c_port else None, "host": HOST,
            "authority": HOST_H2C, "pids": [client.pid, server.pid],
            "names": {"client-proxy": client.pid, "server-proxy": server.pid}}


# === An h2c probe (the standard library has no HTTP/2 client) ===

STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}


def h2c_status(port, authority, timeout=2.0):
    """One HTTP/2 GET / with prior knowledge; the response's :status (0 if it
    cannot be read without a Huffman decoder). Raises OSError on failure."""
    def frame(kind, flags, stream, payload=b""):
        return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
                + stream.to_bytes(4, "big") + payload)
    name = authority.encode()
    # HPACK: :method GET, :scheme http, :path / (static), :authority literal (name index 1).
    block = b"\x82\x86\x84\x01" + bytes([len(name)]) + name
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
        buf = b""
        while True:
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("connection closed before a response")
                buf += chunk
            size = int.from_bytes(buf[:3], "big")
            kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload, buf = buf[9:9 + size], buf[9 + size:]
            if kind == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0))  # SETTINGS ack
            elif kind == 7:
                raise OSError("GOAWAY")
            elif kind == 3 and stream == 1:
                raise OSError("RST_STREAM")
            elif kind == 1 and stream == 1:
                if flags & 0x8:  # PADDED
                    payload = payload[1:len(payload) - payload[0]]
                if flags & 0x20:  # PRIORITY
                    payload = payload[5:]
                while payload and payload[0] & 0xE0 == 0x20:  # dynamic table size updates
                    payload = payload[1:]
                first = payload[0]
                if first & 0x80:
                    return STATIC_STATUS.get(first & 0x7F, 0)
                index = first & 0x3F if first & 0x40 else first & 0x0F
                if index == 8:  # a literal with the name :status
                    n = payload[1]
                    return 0 if n & 0x80 else int(payload[2:2 + n])
                return 0
