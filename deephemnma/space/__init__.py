"""The conformational space: reductions, groups, reconstruction of group maps, centroids, animations, plots."""
