#!/usr/bin/env bash
# Set everything up and serve the app on http://localhost:8501 with the shipped model and a SQLite file.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m db upgrade
if ! .venv/bin/python -m db users count --quiet; then
  echo
  echo "No users yet. Create the first admin (you will be asked for a password):"
  echo "  .venv/bin/python -m db users create --username admin --role admin"
  echo
fi
exec .venv/bin/streamlit run app.py --server.address "${HS_ADDRESS:-localhost}" --server.port "${HS_PORT:-8501}"
