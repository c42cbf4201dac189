"""Align mode: RL framework runs aligned into one SwanLab project."""
