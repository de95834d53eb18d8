"""Apps, clients and a packet capture for the network-namespace cluster test.

Every server exits after its deadline and every client is bounded in time, so
nothing outlives the test even if the Rust side is killed.

  pod.py http PORT NAME SECS           HTTP server: answers "NAME client=<x-mesh-client-id>"
  pod.py echo PORT SECS                TCP echo server (client speaks first)
  pod.py banner PORTS SECS             TCP servers on PORTS (comma list) that greet first
  pod.py echo-peer PORT SECS           echo server that prefixes the peer IP it sees
  pod.py ready URL SECS                waits for URL to answer 200
  pod.py get HOST PORT MARKER SECS [PATH]  HTTP GET with header x-marker; prints a JSON result
  pod.py talk HOST PORT MSG SECS       connect, send MSG, read the echo; JSON result
  pod.py greet HOST PORT SECS          connect, read the banner without sending; JSON result
  pod.py capture DEV FILE STOPFILE SECS  raw frames of DEV into FILE until STOPFILE exists
"""

import http.client
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.request


def serve_for(server, secs):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    time.sleep(secs)
    server.shutdown()


class Threading(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def http_app(port, name, secs):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            client = self.headers.get("x-mesh-client-id", "none")
            body = f"{name} client={client}\n".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    serve_for(http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler), secs)


def stream_app(ports, secs, greet, peer):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            s = self.request
            s.settimeout(10)
            if greet:
                s.sendall(f"banner from {self.server.server_address[1]}\n".encode())
            try:
                while True:
                    data = s.recv(4096)
                    if not data:
                        return
                    if peer:
                        data = f"{self.client_address[0]} ".encode() + data
                    s.sendall(data)
            except OSError:
                return

    servers = [Threading(("0.0.0.0", p), Handler) for p in ports]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    time.sleep(secs)
    for srv in servers:
        srv.shutdown()


def until(secs, attempt):
    """Runs attempt() until it succeeds or secs pass; prints the JSON result."""
    deadline = time.time() + secs
    last = "never tried"
    while time.time() < deadline:
        start = time.time()
        try:
            out = attempt()
            print(json.dumps({"ok": True, "out": out, "secs": time.time() - start}))
            return
        except Exception as e:  # noqa: BLE001 - report any failure
            last = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
    print(json.dumps({"ok": False, "out": last, "secs": 0}))


def get(host, port, marker, path="/"):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", path, headers={"x-marker": marker})
    r = c.getresponse()
    body = r.read().decode()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {body}")
    return body


def talk(host, port, msg):
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(msg.encode())
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
            if got.endswith(msg.encode()):
                break
        if not got:
            raise RuntimeError("connection closed without an answer")
        return got.decode()


def greet(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        data = s.recv(4096)
        if not data:
            raise RuntimeError("connection closed without a banner")
        return data.decode()


def capture(dev, path, stop, secs):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind((dev, 0))
    s.settimeout(0.2)
    deadline = time.time() + secs
    with open(path, "wb") as f:
        print("capturing", flush=True)
        while time.time() < deadline and not os.path.exists(stop):
            try:
                f.write(s.recv(65535))
            except socket.timeout:
                pass


def ready(url, secs):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                print("ready")
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    print("not ready")


def main(argv):
    cmd, args = argv[0], argv[1:]
    if cmd == "http":
        http_app(int(args[0]), args[1], float(args[2]))
    elif cmd == "echo":
        stream_app([int(args[0])], float(args[1]), greet=False, peer=False)
    elif cmd == "echo-peer":
        stream_app([int(args[0])], float(args[1]), greet=False, peer=True)
    elif cmd == "banner":
        ports = [int(p) for p in args[0].split(",")]
        stream_app(ports, float(args[1]), greet=True, peer=False)
    elif cmd == "ready":
        ready(args[0], float(args[1]))
    elif cmd == "get":
        path = args[4] if len(args) > 4 else "/"
        until(float(args[3]), lambda: get(args[0], int(args[1]), args[2], path))
    elif cmd == "talk":
        until(float(args[3]), lambda: talk(args[0], int(args[1]), args[2]))
    elif cmd == "greet":
        until(float(args[2]), lambda: greet(args[0], int(args[1])))
    elif cmd == "capture":
        capture(args[0], args[1], args[2], float(args[3]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
