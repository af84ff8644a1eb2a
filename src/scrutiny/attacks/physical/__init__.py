"""Spatially constrained, universal and physical-world attacks (UAP, stickers, EOT, patches)."""
