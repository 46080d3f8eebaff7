"""Evaluation: pure metric functions, each stating its definition and direction."""
