// Launch configuration of a grid in thread-block clusters along x (cudaLaunchKernelEx), shared by
// the cluster kernels (top-k select, random / adaptive sampling).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace sah {
namespace cuda {

// `blocks` blocks of `threads` threads in clusters of `cluster` blocks; pass `config` to
// cudaLaunchKernelEx. Not copyable: config points at the member attribute.
struct ClusterLaunch {
  cudaLaunchConfig_t config = {};
  cudaLaunchAttribute attr[1];
  ClusterLaunch(unsigned blocks, unsigned threads, int cluster, size_t smem, cudaStream_t stream) {
    config.gridDim = dim3(blocks);
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(cluster);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

}  // namespace cuda
}  // namespace sah
