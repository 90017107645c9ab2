"""Image IO and geometry: file formats, voxel grids, masks and polygons (numpy only, no web, no torch)."""
