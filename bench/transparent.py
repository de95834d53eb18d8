"""The transparent mode of `make bench`: the mesh pair the way pods run it.

A "node" network namespace holds a bridge and the control plane; a client pod and a
server pod each get a veth into the bridge, an address in 198.18.0.0/24, the capture
rules `mesh-proxy init` installs, and their proxy running as the proxy user (2102). The
server pod runs the upstream nginx on 8080 (captured) and 8081 (left out of capture,
`--skip-inbound-ports`). Two peers, both driven by wrk inside the client pod:

  direct-veth        wrk (as the proxy user, not captured) -> server pod :8081 -> nginx
  mesh-transparent   wrk -> Service IP :80, captured -> client proxy -> mTLS
                     -> server pod :8080, captured -> server proxy -> nginx

so the transparent mesh is compared with a direct connection over the same veths and
bridge. Needs root, `ip`, `iptables` and `setpriv`; without them the peers are skipped.
No namespace has a route out; everything is removed at the end.
"""

import os
import shutil
import stat
import subprocess
import time

import peers

NODE_IP, CLIENT_IP, SERVER_IP, SERVICE_IP = "198.18.0.1", "198.18.0.2", "198.18.0.3", "198.19.0.10"
PROXY_UID = "2102"
APP_PORT, DIRECT_PORT = 8080, 8081
AS_PROXY_USER = ["setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"]


def available():
    """None when the transparent peers can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    missing = [t for t in ("ip", "iptables", "setpriv") if not peers.tool(t)]
    return f"missing {', '.join(missing)}" if missing else None


class Namespaces:
    """The test's namespaces, deleted by `close()`."""

    def __init__(self):
        self.names = []

    def add(self, tag):
        name = f"mesh-bench-{tag}-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    @staticmethod
    def run(ns, *argv):
        subprocess.run(["ip", "netns", "exec", ns, *argv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close(self):
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        self.names = []


def get_ok(ns, url, host=None, as_proxy_user=False, timeout=30):
    """Waits until a GET of `url` from inside `ns` answers 200."""
    code = ("import sys, urllib.request\n"
            "req = urllib.request.Request(sys.argv[1])\n"
            "if len(sys.argv) > 2: req.add_header('Host', sys.argv[2])\n"
            "print(urllib.request.urlopen(req, timeout=2).status)\n")
    argv = (["ip", "netns", "exec", ns] + (AS_PROXY_USER if as_proxy_user else [])
            + ["/usr/bin/python3", "-c", code, url] + ([host] if host else []))
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.stdout.strip() == "200":
            return
        time.sleep(0.3)
    raise SystemExit(f"bench: GET {url} from {ns} never answered 200: {out.stderr.strip()[-500:]}")


def manifest(path):
    peers.write(path, f"""apiVersion: v1
kind: Service
metadata: {{name: bench, namespace: demo}}
spec:
  selector: {{app: bench-server}}
  clusterIP: {SERVICE_IP}
  ports: [{{name: http, port: 80, targetPort: {APP_PORT}, appProtocol: http}}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: server, namespace: demo, labels: {{app: bench-server}}}}
spec: {{address: {SERVER_IP}, ports: {{http: {APP_PORT}}}, serviceAccount: server}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: client, namespace: demo, labels: {{app: bench-client}}}}
spec: {{address: {CLIENT_IP}, serviceAccount: client}}
""")


def start(bin_dir, work, ident, nginx):
    """Starts everything; returns (peer entries by name, Namespaces to close)."""
    # Files the proxy user reads live in a world-readable directory.
    shared = os.path.join(work, "transparent")
    os.makedirs(shared)
    for d in (work, shared):
        os.chmod(d, os.stat(d).st_mode | stat.S_IXOTH | stat.S_IROTH)
    proxy_bin = os.path.join(shared, "mesh-proxy")
    shutil.copy(os.path.join(bin_dir, "mesh-proxy"), proxy_bin)
    os.chmod(proxy_bin, 0o755)
    manifests = os.path.join(shared, "manifests")
    os.makedirs(manifests)
    manifest(os.path.join(manifests, "bench.yaml"))

    nss = Namespaces()
    try:
        node = nss.add("node")
        nss.run(node, "ip", "link", "add", "br0", "type", "bridge")
        nss.run(node, "ip", "addr", "add", f"{NODE_IP}/24", "dev", "br0")
        nss.run(node, "ip", "link", "set", "br0", "up")
        pods = {}
        for tag, ip in (("client", CLIENT_IP), ("server", SERVER_IP)):
            pod = nss.add(tag)
            host_end = f"vb-{tag}"
            nss.run(node, "ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
                    "netns", pod)
            nss.run(node, "ip", "link", "set", host_end, "master", "br0")
            nss.run(node, "ip", "link", "set", host_end, "up")
            nss.run(pod, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            nss.run(pod, "ip", "link", "set", "eth0", "up")
            nss.run(pod, "ip", "route", "add", "default", "via", NODE_IP)
            pods[tag] = pod
        nss.run(pods["client"], proxy_bin, "init", "--ipv6", "off")
        nss.run(pods["server"], proxy_bin, "init", "--ipv6", "off",
                "--skip-inbound-ports", str(DIRECT_PORT))

        in_ns = lambda ns: ["ip", "netns", "exec", ns]
        mesh = os.path.join(bin_dir, "mesh")
        token = lambda ns, sa: subprocess.run(
            [mesh, "token", "--namespace", ns, "--service-account", sa, "--key",
             os.path.join(ident, "token.key")], check=True, capture_output=True, text=True).stdout.strip()
        anchors = os.path.join(ident, "trust-anchors.pem")
        peers.spawn("tp-identity", in_ns(node) + [
            os.path.join(bin_dir, "mesh-identity"), "--dir", ident, "--addr", f"{NODE_IP}:8080",
            "--admin-addr", f"{NODE_IP}:9991"], log_dir=work)
        peers.spawn("tp-controller", in_ns(node) + [
            os.path.join(bin_dir, "mesh-controller"), "--source", f"dir:{manifests}",
            "--grpc-addr", f"{NODE_IP}:8086", "--admin-addr", f"{NODE_IP}:9990",
            "--webhook-addr", f"{NODE_IP}:9443", "--identity-addr", f"{NODE_IP}:8080",
            "--trust-anchors", anchors],
            env={"MESH_CONTROLLER_IDENTITY_TOKEN": token("mesh-system", "mesh-controller")},
            log_dir=work)

        # The upstream in the server pod, on the captured and the uncaptured port.
        conf = peers.write(os.path.join(work, "tp-nginx.conf"), peers.nginx_head(work, "tp-nginx") + f"""http {{ access_log off; keepalive_requests 1000000;
  server {{ listen {SERVER_IP}:{APP_PORT}; listen {SERVER_IP}:{DIRECT_PORT}; location / {{ return 200 "ok\\n"; }} }} }}
""")
        upstream = peers.spawn("tp-nginx", in_ns(pods["server"]) + [nginx, "-c", conf, "-p", work],
                               log_dir=work)

        with open(anchors) as f:
            anchors_pem = f.read()
        pids = []
        for tag, ip in (("client", CLIENT_IP), ("server", SERVER_IP)):
            env = {
                "MESH_PROXY_DESTINATION_ADDR": f"{NODE_IP}:8086",
                "MESH_PROXY_IDENTITY_ADDR": f"{NODE_IP}:8080",
                "MESH_PROXY_TRUST_ANCHORS": anchors_pem,
                "MESH_PROXY_IDENTITY_TOKEN": token("demo", tag),
                "MESH_PROXY_NAMESPACE": "demo",
                "MESH_PROXY_SERVICE_ACCOUNT": tag,
                "MESH_PROXY_WORKLOAD": tag,
                "MESH_PROXY_APP_IP": ip,
                "MESH_PROXY_WORKER_THREADS": "1",
                "MESH_PROXY_LOG": "warn",
            }
            p = peers.spawn(f"tp-proxy-{tag}", in_ns(pods[tag]) + AS_PROXY_USER + [proxy_bin],
                            env=env, log_dir=work)
            pids.append(p.pid)
        get_ok(pods["client"], f"http://{SERVER_IP}:{DIRECT_PORT}/", as_proxy_user=True)
        get_ok(pods["client"], f"http://{SERVICE_IP}/")
    except BaseException:
        nss.close()
        raise
    client_ns = in_ns(pods["client"])
    entries = {
        "direct-veth": {"h1": None, "h2c": None, "pids": [], "host": None, "authority": None,
                        "url": f"http://{SERVER_IP}:{DIRECT_PORT}/", "prefix": client_ns + AS_PROXY_USER},
        "mesh-transparent": {"h1": None, "h2c": None, "pids": pids, "host": None, "authority": None,
                             "url": f"http://{SERVICE_IP}/", "prefix": client_ns,
                             "names": {"client-proxy": pids[0], "server-proxy": pids[1]}},
    }
    return entries, upstream, nss
