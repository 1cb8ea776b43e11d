"""Model zoo and benchmark harness (``fusecc bench``)."""
