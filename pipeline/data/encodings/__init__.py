"""Extra input/target encodings computed once at prepare time (HHA, surface normals)."""
