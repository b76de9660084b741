"""The computational core: imports neither pyworkflow nor pwem (runs with torch, numpy and scipy only)."""
