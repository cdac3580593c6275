"""Ray Serve: request schemas, deployments, the app builder and a Python client."""
