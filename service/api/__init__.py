"""The protocol fronts over HTTP, each rendering the runtime's ``Result`` once: ``v1`` (the
contract's JSON API), ``v2`` (the Open Inference Protocol) and ``streams`` (frames over HTTP and
WebSocket); what they share (dependencies, bodies, middleware, the ``/v1`` JSON rendering, health,
the pages) and the one error boundary (``boundary``). Fronts never import each other."""
