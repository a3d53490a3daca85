"""The bundled demo model: a synthetic shapes data set and the script that trains YOLOv8n on it."""
