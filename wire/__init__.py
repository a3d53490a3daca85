"""What every hop of yoloserve says on the wire, defined once: the service, the load balancer and
the client all use it, so that the same condition has the same status, code and headers everywhere.

Light on purpose: pydantic and orjson only (the light install imports it).

- :mod:`wire.schemas`: the response bodies (``DetectionResult``, the error envelope, ...)
- :mod:`wire.errors`: the table of error codes and the error body writer
- :mod:`wire.headers`: header names and the hop-by-hop set
- :mod:`wire.ids`: request ids (generator and the accepted form)
- :mod:`wire.params`: the detection parameters' bounds and defaults
- :mod:`wire.logs`: the JSON log line
"""
