"""i2e-train: spiking neural networks trained on I2E image-to-event streams (arXiv 2511.08065)."""

import os

# OpenMP threads that spin while waiting slow training 2-3x when other jobs share the cores, and
# passive waiting costs nothing measurable on an idle machine (docs/benchmarks.md). It must be set
# before torch loads its OpenMP runtime; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
