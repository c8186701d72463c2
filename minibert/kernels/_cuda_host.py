"""Host-side plumbing shared by the CUDA kernels (attention, dropout, segment sum): which
kind of GPU array came in, how to allocate its like, how to hand it to a Numba kernel, and the
stream to launch on.

CuPy arrays (recognised by their type, or anything else with ``__cuda_array_interface__``)
launch on CuPy's current stream and get CuPy arrays back, handed to Numba through the array
interface without a synchronisation (the launch is on the stream that wrote them). Numba
device arrays (``numba.cuda.to_device``, and the CUDA simulator's ``FakeCUDAArray``) launch
on the default stream and get Numba device arrays back. ``numba.cuda`` is imported when a
``Launch`` is made, not with this module (which ``attention_cuda_launch`` imports for the
op's dispatch): only once a GPU array has arrived.
"""
from __future__ import annotations

import numpy as np


class Launch:
    """Allocation, conversion and the stream for arrays like ``like``."""

    def __init__(self, like):
        from numba import cuda
        self.cuda = cuda
        self.cupy = not cuda.devicearray.is_cuda_ndarray(like) and not hasattr(like, "copy_to_host")
        if self.cupy:
            import cupy
            self.xp = cupy
            ptr = cupy.cuda.get_current_stream().ptr
            self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        else:
            self.xp = None
            self.stream = cuda.default_stream()

    def empty(self, shape, dtype):
        if self.cupy:
            return self.xp.empty(shape, dtype=dtype)
        return self.cuda.device_array(shape, dtype=dtype, stream=self.stream)

    def to_device(self, host):
        """A copy of the NumPy array ``host`` on the device, of the kind of ``like``."""
        if self.cupy:
            return self.xp.asarray(host)
        return self.cuda.to_device(np.ascontiguousarray(host), stream=self.stream)

    def arg(self, x):
        """``x`` as a kernel takes it."""
        cuda = self.cuda
        if cuda.devicearray.is_cuda_ndarray(x):
            return x
        if not hasattr(cuda, "as_cuda_array"):     # the simulator: it takes host arrays
            return x
        return cuda.as_cuda_array(x, sync=False)

    def flat(self, x):
        """x as a C-contiguous 1-D array of the same kind (a view where x is contiguous)."""
        if self.cupy:
            return self.xp.ascontiguousarray(x).reshape(-1)
        if not x.is_c_contiguous():
            raise ValueError(f"a Numba device array of shape {tuple(x.shape)} is not "
                             "C-contiguous, expected a C-contiguous array")
        return x.reshape(x.size)
