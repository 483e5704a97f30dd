"""Kernel backends of hypkern: Triton (``triton/``), native C++/CUDA (``native``) and the tiled
PyTorch loss path (``chunked``)."""
