"""Helpers for the LLM tests: small random LLaMA-family models."""

from compiler.reference import random_llama

__all__ = ["random_llama"]
