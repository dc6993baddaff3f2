"""Generation stages: panorama (FLUX), panoramic depth (MoGe), panoramic video (Wan)."""
