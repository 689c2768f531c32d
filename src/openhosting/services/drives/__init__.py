"""Drives: their rows and rules, their files' upkeep, imaging jobs, standard drives."""
