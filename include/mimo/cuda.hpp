// The mimo library with the CUDA backend, for ordinary .cpp files: everything of <mimo/mimo.hpp>
// plus mimo::Cuda, so that mimo::Model<mimo::Cuda> and mimo::Session<mimo::Cuda> work like their
// CPU counterparts. The kernels come from <mimo/cuda.cuh>, compiled once per program in a .cu file
// (see there). Link the CUDA runtime and cuBLASLt (CMake: mimo::cuda).
#pragma once

#include "mimo/backend/cuda/cuda.hpp"
#include "mimo/mimo.hpp"
