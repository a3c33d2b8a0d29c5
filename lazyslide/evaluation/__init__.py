"""Measuring generated slides against real ones: features, FID and (later) the paper's metrics."""
