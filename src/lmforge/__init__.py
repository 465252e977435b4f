"""lmforge: from raw text to a trained language model and back to text."""

import time

__version__ = "0.1.0"
# When the process started using lmforge: runs report the time from here to their first step.
STARTED_AT = time.perf_counter()
