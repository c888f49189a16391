#!/usr/bin/env bash
# One command for a new user: set up .venv, then record a simulated account
# into ./recorder-demo.db over real HTTP (no Binance keys needed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec recorder demo "$@"
