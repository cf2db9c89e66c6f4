"""Where and how work runs: devices, memory facts and out-of-memory, thread pools, allocator tuning."""
