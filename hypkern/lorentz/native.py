"""Loads the compiled C++/CUDA extension (not written yet)."""
import torch


def supports(device: torch.device):
    return False, "the native extension is not written yet"
