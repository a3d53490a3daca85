"""``/v2``: the Open Inference Protocol (KServe v2 / Triton) over REST."""
