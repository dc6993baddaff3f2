"""Reconstruction: 3D Gaussians from panoramic frames (lift, gsplat optimisation, LRM)."""
