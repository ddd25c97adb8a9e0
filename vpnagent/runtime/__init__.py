"""The container-runtime seam: the only package that talks to a container engine."""
