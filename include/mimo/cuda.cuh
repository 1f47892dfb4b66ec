// The kernels of the CUDA backend. Include this header in exactly ONE .cu file of a program
// (compiled by nvcc): it defines the launchers that mimo::Cuda (mimo/cuda.hpp) calls. Everything
// else, the model, the session and your code, includes <mimo/cuda.hpp> from ordinary .cpp files.
//
//   // mimo_kernels.cu
//   #include <mimo/cuda.cuh>
//
//   // main.cpp
//   #include <mimo/cuda.hpp>
//   auto model = mimo::Model<mimo::Cuda>::load("MiMo-7B-RL");
//
// With CMake: find_package(mimo CONFIG REQUIRED COMPONENTS cuda), enable_language(CUDA), then
// mimo_add_cuda_kernels(your_target) adds such a file and links mimo::cuda.
//
// This header includes no host library code (nvcc cannot compile simdjson's SIMD paths), only the
// kernels, <mimo/backend/backend.hpp> and the CUDA headers. Compiling it twice into one program
// is a link error (the launchers are defined here), not silent misbehaviour.
#pragma once

#if !defined(__CUDACC__)
#error "<mimo/cuda.cuh> holds CUDA kernels: include it from a .cu file compiled by nvcc (and only one)"
#endif

#include "mimo/backend/cuda/argmax.cuh"
#include "mimo/backend/cuda/top.cuh"
#include "mimo/backend/cuda/attention.cuh"
#include "mimo/backend/cuda/elementwise.cuh"
#include "mimo/backend/cuda/embed.cuh"
#include "mimo/backend/cuda/gemv.cuh"
#include "mimo/backend/cuda/rms_norm.cuh"
#include "mimo/backend/cuda/rope.cuh"
