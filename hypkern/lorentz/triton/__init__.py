"""Triton kernels for the Lorentz ops (not written yet)."""
import torch


def supports(device: torch.device):
    return False, "the Triton kernels are not written yet"
