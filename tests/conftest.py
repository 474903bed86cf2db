"""Suite-wide settings.

OMP_WAIT_POLICY=PASSIVE must be set before torch loads OpenMP: with the default (active
spin-waiting) two threads on a busy 2-core machine make every small op wait for a core,
measured here as 10-100x slower test modules.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
