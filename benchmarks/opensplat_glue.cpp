// Python bindings for OpenSplat's CPU projection and rasteriser, compiled by benchmarks/raster_peer.py together with
// the sources of an OpenSplat checkout (none of them is part of this project). Called as OpenSplat's model.cpp calls
// them on a CPU: activated scales with globScale 1, unit wxyz quaternions, projmat = P @ viewmat.
#include <torch/extension.h>

#include "project_gaussians.hpp"
#include "rasterize_gaussians.hpp"

std::vector<torch::Tensor> project(torch::Tensor means, torch::Tensor scales, torch::Tensor quats,
                                   torch::Tensor viewmat, torch::Tensor projmat, double fx, double fy, double cx,
                                   double cy, int64_t height, int64_t width) {
    auto out = ProjectGaussiansCPU::apply(means, scales, 1.0f, quats, viewmat, projmat, (float)fx, (float)fy,
                                          (float)cx, (float)cy, (int)height, (int)width, 0.01f);
    return std::vector<torch::Tensor>(out.begin(), out.end());
}

torch::Tensor rasterize(torch::Tensor xys, torch::Tensor radii, torch::Tensor conics, torch::Tensor colors,
                        torch::Tensor opacity, torch::Tensor cov2d, torch::Tensor depths, int64_t height,
                        int64_t width, torch::Tensor background) {
    return RasterizeGaussiansCPU::apply(xys, radii, conics, colors, opacity, cov2d, depths, (int)height, (int)width,
                                        background);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("project", &project, "ProjectGaussiansCPU::apply");
    m.def("rasterize", &rasterize, "RasterizeGaussiansCPU::apply (differentiable)");
}
