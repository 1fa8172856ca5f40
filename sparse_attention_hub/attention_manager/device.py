"""What the attention selection reads about a device, detected or built by hand (tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

#: Compute capabilities the CUDA kernels of ``torch.ops.sah`` run on. The default build compiles
#: for sm_90a only (``SAH_CUDA_ARCHITECTURES`` in CMakeLists.txt), and sm_90a code runs only on
#: compute capability 9.0.
SAH_CUDA_CAPABILITIES: Tuple[Tuple[int, int], ...] = ((9, 0),)


def _sah_kernels_registered(device_type: str) -> bool:
    """Whether ``sah::sparse_attention`` has a kernel for ``device_type`` in this build."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "sah::sparse_attention", key
    )


def _cpu_available_memory() -> Optional[int]:
    """Available host memory in bytes (None when it cannot be read)."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class DeviceProperties:
    """The decision inputs that come from the device.

    Args:
        type: ``"cpu"`` or ``"cuda"`` (any other type runs the PyTorch backends only).
        name: a label for logs and benchmark tables.
        compute_capability: ``(major, minor)`` of a CUDA device, None otherwise.
        free_memory: bytes free on the device (host memory available for CPU); None = unknown,
            which the selection reads as "no memory pressure".
        sah_kernels: whether this build registers the ``torch.ops.sah`` attention kernels for
            the device type (the CUDA kernels exist only when the package was built with nvcc).
        sah_capabilities: the compute capabilities those CUDA kernels were compiled for.
    """

    type: str
    name: str = ""
    compute_capability: Optional[Tuple[int, int]] = None
    free_memory: Optional[int] = None
    sah_kernels: bool = True
    sah_capabilities: Tuple[Tuple[int, int], ...] = SAH_CUDA_CAPABILITIES

    @property
    def runs_sah_kernels(self) -> bool:
        """Whether the ``sparse`` backend can run here."""
        if not self.sah_kernels:
            return False
        if self.type == "cpu":
            return True
        return self.type == "cuda" and self.compute_capability in self.sah_capabilities

    @classmethod
    def detect(cls, device: Union[str, torch.device, None] = None) -> "DeviceProperties":
        """Properties of ``device`` (default: CUDA when available, else CPU), free memory now."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            free, _ = torch.cuda.mem_get_info(index)
            return cls(
                type="cuda",
                name=torch.cuda.get_device_name(index),
                compute_capability=tuple(torch.cuda.get_device_capability(index)),
                free_memory=int(free),
                sah_kernels=_sah_kernels_registered("cuda"),
            )
        return cls(
            type=device.type,
            name=device.type,
            free_memory=_cpu_available_memory() if device.type == "cpu" else None,
            sah_kernels=_sah_kernels_registered(device.type),
        )
