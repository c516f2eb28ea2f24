"""On the camera: frame sources, the frame pipeline, event sinks, and the local page and HTTP API.

Device-side like ``edgekit.runtime``: numpy, Pillow and the standard library, plus OpenCV
(``[camera]`` extra) only for cameras, video files and streams, and paho-mqtt only for MQTT.
"""
