// The mimo library for the CPU: #include <mimo/mimo.hpp>.
// (For NVIDIA GPUs, include <mimo/cuda.cuh> from a .cu file as well.)
#pragma once

#include "mimo/backend/cpu/cpu.hpp"
#include "mimo/config.hpp"
#include "mimo/error.hpp"
#include "mimo/io/checkpoint.hpp"
#include "mimo/model.hpp"
#include "mimo/weights.hpp"
