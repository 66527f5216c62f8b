#!/usr/bin/env bash
# Checks the deployment files with the tools that work offline:
# - docker-compose (Debian's, v1.29) `config`: the compose file parses and is valid;
# - kubernetes-validate (PyPI, pinned; ships the Kubernetes schemas): every manifest, strict;
# - the gateway's own config check on deploy/gateway.toml and on the ConfigMap's copy, which must
#   be identical.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker-compose >/dev/null || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; }
venv=.venv-deploy
if ! [ -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
docker-compose -f deploy/compose.yaml config -q
echo "compose.yaml: valid"
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.30 deploy/kubernetes/*.yaml
[ -x target/debug/gateway ] || cargo build -q -p gateway --bin gateway
target/debug/gateway check-config deploy/gateway.toml
"$venv/bin/python" - <<'PY'
import sys, yaml
cm = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
if cm["data"]["gateway.toml"] != open("deploy/gateway.toml").read():
    sys.exit("deploy/kubernetes/configmap.yaml gateway.toml differs from deploy/gateway.toml")
print("configmap.yaml: gateway.toml matches deploy/gateway.toml")
PY
