"""What the tests and the benchmarks start and send, run from a checkout (the wheel ships neither):
real processes on loopback ports and the waits around them (``harness.procs``), the fake detect
backend (``harness.backend_app``), the images and request bodies of a load (``harness.images``),
percentiles (``harness.stats``) and the multi-host proving ground (``harness.multihost``)."""
