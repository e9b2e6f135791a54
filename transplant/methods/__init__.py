"""Filling new rows: the initializers, their resources, calibration and the planner."""
