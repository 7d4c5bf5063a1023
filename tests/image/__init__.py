"""The container image, built without Docker and run as the Helm chart runs it."""
