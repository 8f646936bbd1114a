#!/usr/bin/env bash
# Validates every manifest in this folder against the Kubernetes OpenAPI schemas, offline:
# kubernetes-validate (PyPI) ships the schemas of each Kubernetes release inside the package.
# Strict mode rejects unknown fields, so a misspelt or misplaced key fails instead of being
# silently dropped by the API server. Then checks what the schemas cannot: that
# kustomization.yaml lists every manifest, and that the selectors and names tie together.
#
# KUBERNETES_VERSION picks the schemas (default: the oldest release we claim to run on).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
validator_version=1.37.0
kubernetes_version=${KUBERNETES_VERSION:-1.31.0}
venv=$root/.venv

if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$validator_version" ]; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$validator_version"
fi

manifests=()
for file in "$here"/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
echo "kubernetes-validate $validator_version, Kubernetes $kubernetes_version, strict:"
# The validator only warns, and exits 0, for a kind or apiVersion it has no schema for (a
# typo such as autoscaling/v3 included): such a warning fails here.
report=$("$venv/bin/kubernetes-validate" --strict -k "$kubernetes_version" "${manifests[@]}") || {
  echo "$report"; exit 1; }
echo "$report"
if grep -q '^WARN' <<<"$report"; then
  echo "ERROR: a manifest was not checked against a schema (see WARN above)" >&2
  exit 1
fi

"$venv/bin/python" - "$here" <<'PY'
import pathlib, sys, yaml

here = pathlib.Path(sys.argv[1])
errors = []
docs = {}
for path in sorted(here.glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            docs.setdefault(doc["kind"], []).append((path.name, doc))

kustomization = docs.pop("Kustomization")[0][1]
listed = set(kustomization["resources"])
# The example Secret holds placeholders and must never be applied by `kubectl apply -k`.
expected = {name for kind in docs.values() for name, _ in kind} - {"secret.example.yaml"}
for name in sorted(listed - expected):
    errors.append(f"kustomization.yaml lists {name}, which is not here")
for name in sorted(expected - listed):
    errors.append(f"kustomization.yaml does not list {name}")

want = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "Job"}
if set(docs) != want:
    errors.append(f"kinds {sorted(docs)}, expected {sorted(want)}")
else:
    [(_, deployment)] = docs["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    def selects(selector, what):
        if any(pod_labels.get(k) != v for k, v in selector.items()):
            errors.append(f"{what} selector {selector} does not match the pods {pod_labels}")
    selects(deployment["spec"]["selector"]["matchLabels"], "Deployment")
    for name, service in docs["Service"]:
        selects(service["spec"]["selector"], name)
    selects(docs["PodDisruptionBudget"][0][1]["spec"]["selector"]["matchLabels"], "PDB")
    target = docs["HorizontalPodAutoscaler"][0][1]["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        errors.append(f"the HPA scales {target}, not the Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    refs = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]}
    names = {docs["ConfigMap"][0][1]["metadata"]["name"], docs["Secret"][0][1]["metadata"]["name"]}
    if refs != names:
        errors.append(f"the Deployment reads {sorted(refs)}, the folder defines {sorted(names)}")
    config = docs["ConfigMap"][0][1]["data"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = (int(config["SHUTDOWN_DELAY_MS"]) + int(config["SHUTDOWN_DRAIN_MS"])) / 1000
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain += pre_stop
    # The drain must end before the kubelet's SIGKILL, with time to close streams and
    # release job leases.
    if grace < drain + 5:
        errors.append(f"terminationGracePeriodSeconds {grace} leaves under 5 s past the {drain:g} s drain")

for error in errors:
    print("ERROR:", error, file=sys.stderr)
if errors:
    sys.exit(1)
print("kustomization, selectors, names and grace period: consistent")
PY
