"""Occlusion-aware scaffold mesh from a panorama + distance, and its renderers."""
