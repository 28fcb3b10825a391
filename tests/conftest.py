"""Test-session settings."""

import torch

# One intra-op thread: the tests' tensors are tiny, and on a 2-core machine two processes
# each spinning two OpenMP threads (a test beside a spawned worker, or beside another job)
# can slow each other down tens of times.
torch.set_num_threads(1)
