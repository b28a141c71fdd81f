"""The Flask web application: REST API, health, metrics and live streams."""
