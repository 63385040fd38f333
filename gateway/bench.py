"""`tiergate bench`: the gateway overhead benchmark, bench/overhead.py of the source checkout.

The harness starts NGINX, a FastAPI proxy, a no-op pool and tiergate stacks, so it runs
from the checkout this package was installed from (editable install), never a wheel.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if not (CHECKOUT / "bench" / "overhead.py").exists():
        print(f"tiergate bench: no bench/overhead.py in {CHECKOUT}; run it from a source checkout "
              "(pip install -e .)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "bench.overhead", *argv], cwd=CHECKOUT)
