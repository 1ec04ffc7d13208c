#!/usr/bin/env bash
# Compile every Triton kernel variant for sm_90 with Triton 3.6, the GPU image's version
# (tests/test_triton_aot.py does it with the installed Triton). Triton 3.6 goes into a side
# virtual environment that borrows torch from the current one; nothing else changes.
#
#   bash tests/aot_triton36.sh [--json]        (PYTHON=python, AOT_VENV=.aot-triton36)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
VENV="${AOT_VENV:-.aot-triton36}"
if ! "$VENV/bin/python" -c "import triton, sys; sys.exit(triton.__version__ != '3.6.0')" 2>/dev/null; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "triton==3.6.0" >&2
    # torch (and what it needs) from the current environment, after the side venv's own Triton.
    torch_site=$("$PYTHON" -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$torch_site" > "$site/zz_borrowed_torch.pth"
fi
env -u TRITON_INTERPRET PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
    "$VENV/bin/python" tests/test_triton_aot.py "$@"
