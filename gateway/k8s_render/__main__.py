"""`python -m gateway.k8s_render`: the same as `tiergate render-k8s`."""

import sys

from . import main

sys.exit(main())
