"""Versions, manifests, the champion alias and its audit log. Imports nothing else of ours."""
