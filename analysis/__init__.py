"""Reducing side of mia-hpc: reads a shadow store with xarray/dask; never imports torch."""
