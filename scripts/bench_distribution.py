#!/usr/bin/env python3
"""Model distribution benchmark (scripts/bench-distribution.sh runs it). In one run:

1. Pull of the whole test model from one seeder over loopback (`bitorch model pull`: every
   piece verified and written) against a plain TCP copy of the same bytes over loopback into a
   file (the reference).
2. Pull from two seeders each limited to RATE MB/s (`--seed-rate`) against one such seeder.
3. `bitorch model import` time and peak resident memory for files of 1x, 2x and 4x the test
   model's size (layers repeated, scripts/lib/grow_gguf.py): streaming, so memory stays flat.
4. Verification cost per GB (`bitorch model verify`: every piece hashed again).

Each pull runs on a fresh one-validator chain on loopback; the validator imports and registers
the model (`--serve-model PATH`), extra seeders import it with `bitorch model import`, and a
non-validator node pulls it.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

BIN, MODEL, WORK, RATE = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
PORT = [21000]


def port():
    PORT[0] += 1
    return PORT[0]


def rpc(p, method, params=None, timeout=600):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(f"http://127.0.0.1:{p}", body.encode(), {"Content-Type": "application/json"})
    out = json.load(urllib.request.urlopen(req, timeout=timeout))
    if "error" in out:
        raise RuntimeError(f"{method}: {out['error']}")
    return out["result"]


def wait(what, ok, secs=180):
    t = time.time()
    while time.time() - t < secs:
        try:
            if ok():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


class Net:
    def __init__(self, name):
        self.dir = os.path.join(WORK, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.spec = os.path.join(self.dir, "spec.json")
        subprocess.run([BIN, "chain-spec", "--chain", "local", "--validators", "1", "-o", self.spec], check=True)
        self.procs, self.boot = [], None

    def node(self, name, extra, validator=False):
        base = os.path.join(self.dir, name)
        keydir = os.path.join(base, "chains/local/network")
        os.makedirs(keydir, exist_ok=True)
        peer = subprocess.run([BIN, "key", "generate-node-key", "--file", os.path.join(keydir, "secret_ed25519")],
                              capture_output=True, text=True).stderr.strip()
        rp, pp = port(), port()
        args = [BIN, "node", "--chain", self.spec, "--base-path", base, "--rpc-port", str(rp),
                "--listen-addr", f"/ip4/127.0.0.1/tcp/{pp}", "--block-time", "500"] + extra
        if validator:
            args += ["--validator", "//Alice"]
        if self.boot:
            args += ["--boot-nodes", self.boot]
        log = open(base + ".log", "w")
        self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log))
        if not self.boot:
            self.boot = f"/ip4/127.0.0.1/tcp/{pp}/p2p/{peer}"
        wait(f"{name}'s RPC", lambda: rpc(rp, "system_health") is not None)
        return base, rp

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def model_id():
    out = subprocess.run([BIN, "model", "import", MODEL, "--base-path", os.path.join(WORK, "scratch")],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def pull_time(seeders_rate, n_seeders):
    """Seconds `bitorch model pull` takes on a fresh chain with n seeders (rate None: no limit)."""
    net = Net(f"pull-{n_seeders}-{seeders_rate}")
    try:
        limit = ["--seed-rate", str(seeders_rate)] if seeders_rate else []
        _, a = net.node("A", ["--serve-model", MODEL, "--api-account", "//Alice", "--api-port", str(port())] + limit,
                        validator=True)
        wait("the model on chain", lambda: rpc(a, "bitorch_seedStats")["provided"] == 31)
        seeders = [a]
        for i in range(1, n_seeders):
            base = os.path.join(net.dir, f"S{i}")
            os.makedirs(base, exist_ok=True)
            subprocess.run([BIN, "model", "import", MODEL, "--base-path", base], check=True, capture_output=True)
            _, s = net.node(f"S{i}", limit)
            wait(f"S{i} to provide", lambda: rpc(s, "bitorch_seedStats")["provided"] == 31)
            seeders.append(s)
        _, d = net.node("D", [])
        time.sleep(3)  # provider records spread
        mid = model_id()
        t = time.time()
        out = subprocess.run([BIN, "model", "pull", mid, "--rpc", f"ws://127.0.0.1:{d}", "--output-type", "json"],
                             capture_output=True, text=True)
        wall = time.time() - t
        if out.returncode != 0:
            raise SystemExit(f"pull failed: {out.stderr}")
        report = json.loads(out.stdout)
        return report["secs"], wall, report
    finally:
        net.stop()


def tcp_copy_time():
    """Seconds to send the model's bytes over loopback TCP into a file (best of 3)."""
    best = 1e9
    for _ in range(3):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        p = srv.getsockname()[1]

        def serve():
            c, _ = srv.accept()
            with open(MODEL, "rb") as f:
                c.sendfile(f)
            c.close()

        th = threading.Thread(target=serve)
        th.start()
        dst = os.path.join(WORK, "tcp-copy")
        t = time.time()
        s = socket.create_connection(("127.0.0.1", p))
        buf = bytearray(1 << 20)
        with open(dst, "wb") as out:
            while True:
                n = s.recv_into(buf)
                if not n:
                    break
                out.write(memoryview(buf)[:n])
            out.flush()
            os.fsync(out.fileno())
        best = min(best, time.time() - t)
        s.close()
        th.join()
        srv.close()
    return best


def import_figures():
    rows = []
    for factor in (1, 2, 4):
        path = MODEL if factor == 1 else os.path.join(WORK, f"grown-{factor}.gguf")
        if factor > 1 and not os.path.exists(path):
            here = os.path.dirname(os.path.abspath(__file__))
            subprocess.run([sys.executable, os.path.join(here, "lib/grow_gguf.py"), MODEL, path, str(factor)], check=True)
        store = os.path.join(WORK, f"import-{factor}")
        shutil.rmtree(store, ignore_errors=True)
        out = subprocess.run(["/usr/bin/time", "-f", "%e %M", BIN, "model", "import", path, "--base-path", store],
                             capture_output=True, text=True, check=True)
        secs, kb = out.stderr.strip().splitlines()[-1].split()
        mid = out.stdout.split()[1]
        ver = subprocess.run([BIN, "model", "verify", mid, "--base-path", store], capture_output=True, text=True,
                             check=True).stdout
        per_gb = float(re.search(r"\(([\d.]+) s per GB\)", ver).group(1))
        rows.append((factor, os.path.getsize(path), float(secs), int(kb), per_gb))
        shutil.rmtree(store, ignore_errors=True)
    return rows


def main():
    os.makedirs(WORK, exist_ok=True)
    size = os.path.getsize(MODEL)
    tcp = tcp_copy_time()
    one, one_wall, _ = pull_time(None, 1)
    lim1, _, _ = pull_time(RATE, 1)
    lim2, _, rep2 = pull_time(RATE, 2)
    mb = size / 1e6
    print(f"\nModel distribution, {os.path.basename(MODEL)} ({mb:.1f} MB), this machine, one run\n")
    print("| what | seconds | MB/s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| plain TCP copy over loopback into a file (reference) | {tcp:.3f} | {mb / tcp:.0f} | 1.00 |")
    print(f"| `bitorch model pull`, 1 seeder, loopback, no limit (pull / CLI wall) | {one:.3f} / {one_wall:.3f} | {mb / one:.0f} | {tcp / one:.2f}x TCP |")
    print(f"| pull from 1 seeder at {RATE:g} MB/s | {lim1:.3f} | {mb / lim1:.1f} | 1.00 |")
    print(f"| pull from 2 seeders at {RATE:g} MB/s each | {lim2:.3f} | {mb / lim2:.1f} | {lim1 / lim2:.2f}x one seeder |")
    shares = ", ".join(f"{b / 1e6:.1f} MB" for b in rep2["byPeer"].values())
    print(f"\n(two-seeder pull: bytes per seeder {shares})\n")
    print("| `bitorch model import` of | file MB | seconds | peak RSS MB | verify s/GB |")
    print("|---|---:|---:|---:|---:|")
    for factor, fsize, secs, kb, per_gb in import_figures():
        print(f"| {factor}x the model | {fsize / 1e6:.0f} | {secs:.2f} | {kb / 1e3:.1f} | {per_gb:.2f} |")


main()
