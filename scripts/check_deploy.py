#!/usr/bin/env python3
"""Checks deploy/ without a container engine or a cluster (none runs on the CI machine):

- every Kubernetes manifest against the API's own OpenAPI schemas (PyPI `kubernetes-validate`,
  strict: unknown fields are errors);
- each Dockerfile parsed (PyPI `dockerfile-parse`): multi-stage, a non-root final user, only
  binaries this workspace builds copied, the exposed port the one the entrypoint serves;
- the two agree with dlm-server itself: the container's arguments (entrypoint + Deployment
  args) pass the real binary's checks (it then stops at the model file, absent here),
  probes ask paths dlm-server serves, the autoscaler's metric is one /metrics reports, and the
  grace period covers preStop plus --shutdown-timeout. (The arguments run the real server,
  which checks them all and then fails on the model path, absent here.)

Usage: check_deploy.py PATH/TO/dlm-server     (exit 1 with one line per problem)
"""

import glob
import json
import os
import re
import subprocess
import sys

import yaml
import kubernetes_validate
from dockerfile_parse import DockerfileParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_VERSION = "1.30.0"
problems = []


def problem(where, what):
    problems.append(f"{os.path.relpath(where, ROOT)}: {what}")


def workspace_bins():
    names = set()
    for toml in ["Cargo.toml", "server/Cargo.toml", "convert/Cargo.toml"]:
        text = open(os.path.join(ROOT, toml)).read()
        names.update(re.findall(r'\[\[bin\]\]\s*\nname\s*=\s*"([^"]+)"', text))
        if "[[bin]]" not in text:
            names.update(re.findall(r'^name\s*=\s*"([^"]+)"', text, re.M)[:1])
    return names


def check_dockerfile(path, server):
    df = DockerfileParser(fileobj=open(path, "rb"))
    instr = df.structure
    froms = [i for i in instr if i["instruction"] == "FROM"]
    if len(froms) < 2:
        problem(path, f"{len(froms)} FROM stage(s): expected a build stage and a smaller runtime stage")
    last_from = max(i["startline"] for i in froms) if froms else -1
    final = [i for i in instr if i["startline"] > last_from]
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    if not users or users[-1] in ("root", "0", "0:0"):
        problem(path, "the final stage runs as root: add USER with a non-root uid")
    bins = workspace_bins()
    for i in final:
        if i["instruction"] == "COPY" and "--from=" in i["value"]:
            for src in i["value"].split()[1:-1]:
                name = os.path.basename(src)
                if name not in bins:
                    problem(path, f"copies `{name}`, which no [[bin]] of the workspace builds ({', '.join(sorted(bins))})")
    exposed = [i["value"].split()[0].split("/")[0] for i in final if i["instruction"] == "EXPOSE"]
    entry = [json.loads(i["value"]) for i in final if i["instruction"] == "ENTRYPOINT"]
    cmd = [json.loads(i["value"]) for i in final if i["instruction"] == "CMD"]
    if not entry or os.path.basename(entry[-1][0]) != "dlm-server":
        problem(path, "the entrypoint is not dlm-server (exec form)")
        return None
    args = entry[-1][1:]
    port = args[args.index("--port") + 1] if "--port" in args else "8080"
    if exposed != [port]:
        problem(path, f"EXPOSE {exposed} but dlm-server listens on {port}")
    if "0.0.0.0" not in args:
        problem(path, "dlm-server listens on 127.0.0.1 by default: a container needs --host 0.0.0.0")
    parses(path, server, args + (cmd[-1] if cmd else []))
    return args


def parses(where, server, args):
    """The arguments as dlm-server checks them: parsed and validated by the binary itself,
    which then stops at the model file (it does not exist here; on a free port of this
    machine). Any other error is an argument the server would refuse at start."""
    args = list(args)
    model = args[args.index("-m") + 1] if "-m" in args else None
    for flag, value in (("--port", "0"), ("--host", "127.0.0.1")):
        while flag in args:
            i = args.index(flag)
            del args[i : i + 2]
        args += [flag, value]
    if model is None:
        problem(where, "no -m: dlm-server needs a model")
        return
    out = subprocess.run([server, *args], capture_output=True, text=True, timeout=60)
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    if out.returncode != 2 or len(errors) != 1 or model not in errors[0]:
        problem(where, f"dlm-server refuses the arguments {args}: {errors[0] if errors else out.stderr.strip()[-300:]}")


def check_manifests(server, entry_args):
    routes = open(os.path.join(ROOT, "server/src/main.rs")).read()
    metrics = open(os.path.join(ROOT, "server/src/metrics.rs")).read()
    files = sorted(glob.glob(os.path.join(ROOT, "deploy/k8s/*.yaml")))
    if not files:
        problem(os.path.join(ROOT, "deploy/k8s"), "no manifests")
    for path in files:
        for doc in yaml.safe_load_all(open(path)):
            if doc is None:
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problem(path, f"{doc.get('kind')}: {e.message} at {'.'.join(map(str, e.path))}")
                continue
            except Exception as e:  # a kind the schemas do not know, and the like
                problem(path, f"{doc.get('kind')}: {e}")
                continue
            kind = doc["kind"]
            if kind == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                for c in pod["containers"]:
                    if entry_args is not None:
                        parses(path, server, entry_args + c.get("args", []))
                    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
                        p = c.get(probe, {}).get("httpGet")
                        if p is None:
                            problem(path, f"{c['name']}: no {probe} over HTTP")
                            continue
                        if f'.route("{p["path"]}"' not in routes:
                            problem(path, f"{c['name']}: {probe} asks {p['path']}, which dlm-server does not serve")
                        port = ports.get(p["port"], p["port"])
                        if entry_args is not None and str(port) != entry_args[entry_args.index("--port") + 1]:
                            problem(path, f"{c['name']}: {probe} asks port {port}, dlm-server listens on the image's --port")
                    args = c.get("args", [])
                    shutdown = int(args[args.index("--shutdown-timeout") + 1]) if "--shutdown-timeout" in args else 60
                    stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                    pre = int(stop[1]) if len(stop) == 2 and stop[0] == "sleep" else 0
                    grace = pod.get("terminationGracePeriodSeconds", 30)
                    if grace <= pre + shutdown:
                        problem(path, f"{c['name']}: terminationGracePeriodSeconds {grace} does not cover preStop {pre} s + --shutdown-timeout {shutdown} s: running requests would be killed")
            if kind == "HorizontalPodAutoscaler":
                for m in doc["spec"].get("metrics", []):
                    if m["type"] == "Pods":
                        name = m["pods"]["metric"]["name"]
                        if f'"{name}"' not in metrics:
                            problem(path, f"the autoscaler reads {name}, which dlm-server's /metrics does not report")


def main():
    if len(sys.argv) != 2 or not os.access(sys.argv[1], os.X_OK):
        sys.exit("usage: check_deploy.py PATH/TO/dlm-server")
    server = sys.argv[1]
    entry = None
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/Dockerfile*"))):
        args = check_dockerfile(path, server)
        if path.endswith("/Dockerfile"):
            entry = args
    check_manifests(server, entry)
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
