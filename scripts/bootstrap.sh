#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the project with its test extras.
# Sourced by demo.sh and test.sh; re-installs only when pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "recorder needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.recorder-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # This machine's pip config names a local mirror folder that may be absent;
    # its warnings are noise, real errors still fail the install.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[test]" 2> >(grep -v "is ignored: it is neither" >&2)
    echo "$want" > "$stamp"
fi
# The package's bytecode, as a non-editable install would have it: where PYTHONDONTWRITEBYTECODE
# is set (or the checkout is read-only to a service) every start would compile the modules again,
# costing each `recorder` process its start-up time and about 1 MB of peak memory. Up-to-date
# files are skipped; an edited module is compiled afresh from its newer source, never run stale.
"$venv/bin/python" -m compileall -q "$root/recorder" >/dev/null
export PATH="$venv/bin:$PATH"
