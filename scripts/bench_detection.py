#!/usr/bin/env python3
"""Detection of cheating workers at the chain's default audit probability, through real nodes.

Usage: bench_detection.py BIN MODEL WORKDIR REQUESTS MODE [MODE...]

For each MODE (an `--unsafe-cheat` of the node: random-outputs, skip-layers, other-weights,
other-trace, other-logits, refuse-openings): a 4-validator loopback testnet with the chain's default audit
parameters (base rate, slash, auditors); Alice serves layers 0..10 and the OpenAI API (paid by
//Eve), Bob serves 10..30 cheating that way, Charlie and Dave serve 0..10 honestly. REQUESTS
short greedy chat completions are sent one after another; once every job has settled, Bob's
claims and the honest ones are read from `bitorch_job`. Prints, per mode: Bob's claims, how many
the chain chose to audit and how many it was expected to (the sum of each claim's probability,
`jobs::audit_ppm`, with Bob's stake before the run), how many of those found him out (outcome
failed), what he was paid and what he was slashed (in BTR), and for the honest claims: audited, passed, and wrongly
failed (must be 0).
"""
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from api_wait import served_model

BIN, MODEL, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
REQUESTS = int(sys.argv[4])
MODES = sys.argv[5:]
NAMES = ["Alice", "Bob", "Charlie", "Dave"]
RANGES = ["0..10", "10..30", "0..10", "0..10"]


USED = set()


def free_port():
    """A free loopback port below Linux's ephemeral range (no outgoing connection can take it
    before the node binds it), each handed out once."""
    while True:
        port = random.randrange(20_000, 32_768)
        if port in USED:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        USED.add(port)
        return port


def rpc(port, method, params=None):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(f"http://127.0.0.1:{port}", body.encode(),
                                 {"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(req, timeout=30))
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def address(name):
    out = subprocess.run([BIN, "key", "inspect", f"//{name}"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if "SS58" in line or "ss58" in line.lower():
            return line.split()[-1]
    raise RuntimeError(f"no address for {name}: {out.stdout} {out.stderr}")


def audit_ppm(base_percent, slash_percent, amount, stake):
    """The pallet's rule: at least the base rate; enough that p × slash ≥ 2 × amount."""
    base = base_percent * 10_000
    slashable = stake * slash_percent // 100
    if slashable == 0:
        return 1_000_000
    need = -(-2 * amount * 1_000_000 // slashable)
    return min(1_000_000, max(base, need))


def run(mode):
    d = os.path.join(WORK, mode)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    spec = os.path.join(d, "spec.json")
    subprocess.run([BIN, "chain-spec", "--chain", "local", "--validators", "4", "-o", spec],
                   check=True, capture_output=True)
    jobs_params = json.load(open(spec))["genesis"]["jobs"]
    procs, rpcs, api, boot = [], [], free_port(), ""
    try:
        for i, name in enumerate(NAMES):
            base = os.path.join(d, f"node{i}")
            keyfile = os.path.join(base, "chains", "local", "network", "secret_ed25519")
            os.makedirs(os.path.dirname(keyfile))
            peer = subprocess.run([BIN, "key", "generate-node-key", "--file", keyfile],
                                  capture_output=True, text=True, check=True).stderr.strip()
            port, p2p = free_port(), free_port()
            args = [BIN, "node", "--chain", spec, "--base-path", base, "--validator", f"//{name}",
                    "--rpc-port", str(port), "--listen-addr", f"/ip4/127.0.0.1/tcp/{p2p}",
                    "--serve-model", MODEL, "--layers", RANGES[i], "--api-account", "//Eve",
                    "--api-port", str(api if i == 0 else free_port())]
            if boot:
                args += ["--boot-nodes", boot]
            if i != 0:
                args.append("--no-job-ahead")
            if name == "Bob":
                args += ["--unsafe-cheat", mode]
            log = open(os.path.join(d, f"node{i}.log"), "w")
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            rpcs.append(port)
            if not boot:
                boot = f"/ip4/127.0.0.1/tcp/{p2p}/p2p/{peer}"
        model = served_model(api, within=300)
        bob = address("Bob")
        stake = int(rpc(rpcs[0], "bitorch_account", [bob])["reserved"])
        url = f"http://127.0.0.1:{api}/v1/chat/completions"
        ok = 0
        for i in range(REQUESTS):
            body = json.dumps({"model": model, "temperature": 0, "max_tokens": 4, "messages": [
                {"role": "user", "content": f"Say a word about number {i}."}]}).encode()
            for _ in range(60):
                try:
                    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                    urllib.request.urlopen(req, timeout=120).read()
                    ok += 1
                    break
                except urllib.error.HTTPError as e:
                    if e.code not in (429, 503):
                        print(f"request {i}: {e.code} {e.read()[:200]}", file=sys.stderr)
                        break
                    time.sleep(1)
        # Every job with claims settled: its claims' audits are over (the gateway keeps a job
        # opened ahead without claims; its channels close after 10 s idle).
        deadline = time.time() + 900
        while True:
            jobs = []
            for i in range(100_000):
                j = rpc(rpcs[0], "bitorch_job", [i])
                if j is None:
                    break
                jobs.append(j)
            if all("settled" in j["status"] for j in jobs if j["claims"]):
                break
            if time.time() > deadline:
                raise RuntimeError("jobs did not settle in 15 minutes")
            time.sleep(2)
        claims = [(j, c) for j in jobs for c in j["claims"]]
        bobs = [(j, c) for j, c in claims if c["worker"] == bob]
        honest = [(j, c) for j, c in claims if c["worker"] != bob]
        audited = [c for _, c in bobs if c["audit"] is not None and c["audit"]["outcome"] is not None]
        # Audits nobody could be assigned to resolve at once as inconclusive: none here.
        caught = [c for c in audited if isinstance(c["audit"]["outcome"], dict)
                  and "failed" in c["audit"]["outcome"]]
        ps = []
        for j, c in bobs:
            amount = (c["layerEnd"] - c["layerStart"]) * c["positions"] * int(j["pricePerLayerToken"])
            ps.append(audit_ppm(jobs_params["auditPercent"], jobs_params["auditSlashPercent"],
                                amount, stake) / 1e6)
        expected, sd = sum(ps), math.sqrt(sum(p * (1 - p) for p in ps))
        paid = sum(int(c["paid"]) for _, c in bobs)
        slashed = sum(int(c["audit"]["outcome"]["failed"]["slashed"]) for c in caught)
        honest_audited = [c for _, c in honest if c["audit"] is not None]
        false = [c for c in honest_audited if isinstance(c["audit"]["outcome"], dict)
                 and "failed" in c["audit"]["outcome"]]
        passed = [c for c in honest_audited if c["audit"]["outcome"] == "passed"]
        return (ok, len(bobs), len(audited), expected, sd, len(caught), paid, slashed,
                len(honest), len(honest_audited), len(passed), len(false))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


print(f"\n{'cheat (Bob, 10..30)':<18} {'answered':>8} {'claims':>7} {'audited':>8} "
      f"{'expected':>14} {'caught':>7} {'Bob paid':>10} {'slashed':>10} {'honest':>7} "
      f"{'h.audited':>9} {'h.passed':>8} {'false':>6}")
for mode in MODES:
    ok, n, a, e, sd, c, paid, slashed, h, ha, hp, f = run(mode)
    print(f"{mode:<18} {ok:>8} {n:>7} {a:>8} {f'{e:.1f} ± {sd:.1f}':>14} {c:>7} "
          f"{paid / 1e12:>10.3f} {slashed / 1e12:>10.3f} {h:>7} {ha:>9} {hp:>8} {f:>6}",
          flush=True)
