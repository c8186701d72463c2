"""Host-side plumbing shared by the CUDA kernels (attention, dropout, segment sum): which
kind of GPU array came in, how to allocate its like, how to hand it to a Numba kernel, and the
stream to launch on.

CuPy arrays (recognised by their type, or anything else with ``__cuda_array_interface__``)
launch on CuPy's current stream and get CuPy arrays back, handed to Numba through the array
interface without a synchronisation (the launch is on the stream that wrote them). Numba
device arrays (``numba.cuda.to_device``, and the CUDA simulator's ``FakeCUDAArray``) launch
on the default stream and get Numba device arrays back. Imports ``numba.cuda``: only the
kernels' modules import this one, and only once a GPU array has arrived.
"""
from __future__ import annotations

from numba import cuda


class Launch:
    """Allocation, conversion and the stream for arrays like ``like``."""

    def __init__(self, like):
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
        return cuda.device_array(shape, dtype=dtype, stream=self.stream)

    def arg(self, x):
        """``x`` as a kernel takes it."""
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
