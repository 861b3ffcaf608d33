# Sourced by scripts/serve and scripts/test: find Python >= 3.12, create .venv, install.
# Usage: bootstrap_venv EXTRAS   (EXTRAS: "" or "[test]")
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"

find_python() {
    local candidates=("${AIGW_PYTHON:-}" python3.13 python3.12 python3 python)
    if command -v pyenv >/dev/null 2>&1; then
        for v in 3.13 3.12; do
            local p; p="$(pyenv root)/versions/$(pyenv versions --bare 2>/dev/null | grep -E "^$v(\.|$)" | tail -n1)/bin/python3"
            candidates+=("$p")
        done
    fi
    for c in "${candidates[@]}"; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}

bootstrap_venv() {
    local extras="$1"
    local stamp="$VENV/.installed$extras"
    if [ ! -x "$VENV/bin/python" ]; then
        local py
        if ! py="$(find_python)"; then
            echo "aigw needs Python >= 3.12 (mitmproxy 12 requires it) and none was found." >&2
            echo "Install one (e.g. apt install python3.12, brew install python@3.12, or pyenv install 3.12)," >&2
            echo "or point AIGW_PYTHON at its interpreter." >&2
            exit 1
        fi
        echo "creating $VENV with $py" >&2
        "$py" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO$extras"
        touch "$stamp"
    fi
}
