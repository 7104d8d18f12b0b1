"""Serving: the step whose speed is measured, how it is built (``ServingConfig``), compiled and
timed, and the kernels it runs on (fused products, 2:4 sparse kernels, decode kernels)."""
