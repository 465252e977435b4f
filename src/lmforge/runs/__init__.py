"""Whole runs: loading a trained run, reporting on runs, comparing recipes, checking resume."""
