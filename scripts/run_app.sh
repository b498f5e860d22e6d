#!/usr/bin/env bash
# Set everything up and serve the app on http://localhost:8501 with the shipped model and a SQLite file.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m db upgrade
if ! .venv/bin/python -m db users list >/dev/null; then
  if [ -t 0 ]; then
    echo "No users yet: create the first admin now (the password is asked twice and never shown)."
    read -r -p "admin username [admin]: " name
    .venv/bin/python -m db users create --username "${name:-admin}" --role admin
  else
    echo "No users yet. Create the first admin with:"
    echo "  .venv/bin/python -m db users create --username admin --role admin"
  fi
fi
exec .venv/bin/streamlit run app.py --server.address "${HS_ADDRESS:-localhost}" --server.port "${HS_PORT:-8501}"
