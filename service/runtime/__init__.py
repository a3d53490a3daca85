"""What every protocol shares, below the fronts: the models (``registry``) on one process-wide
device, admission, the result cache and coalescing, the decode pool, each model's ``Inferencer``
and raw network, video streams and their trackers. It answers ``result.Result`` (the engine's
full-precision arrays, batch size, timings, cached) and knows no wire format."""
