"""``/v1/streams``: a video stream's frames in over HTTP or a WebSocket, tracked detections out."""
