#!/usr/bin/env bash
# Installs what the tests need that cargo does not provide. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test tools: nothing extra needed yet"
