"""Delivery of certificates: directory, Kubernetes Secret."""
