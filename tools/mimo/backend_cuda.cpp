// The CUDA builds of mimo generate and mimo chat (--backend cuda [--device N]). Host code: the
// kernels come in through mimo_add_cuda_kernels (cmake/cuda.cmake).
#ifdef MIMO_CLI_HAS_CUDA
#include <cuda_runtime.h>

#include <mimo/cuda.hpp>

#include "chat_command.hpp"
#include "generate_command.hpp"

namespace mimo::cli {

template <>
Expected<Cuda::ContextOptions> context_options<Cuda>(const Args& args) {
  auto device = args.get_int("device", 0);
  if (!device) return std::move(device).error();
  if (*device < 0 || *device > 1024) return Error(Errc::invalid_argument, "--device must be a CUDA device ordinal");
  auto kv = kv_cache_type(args, Cuda::ContextOptions{}.kv_cache);  // checked before any device is touched
  if (!kv) return std::move(kv).error();
  if (!cuda::cuda_kv_type(*kv)) return Error(Errc::invalid_argument, "--kv-cache i8 is CPU only (CUDA: f32, f16 or bf16)");
  // The weights are uploaded to the current device when the model loads.
  if (cudaSetDevice(static_cast<int>(*device)) != cudaSuccess) {
    return Error(Errc::backend, "--device " + std::to_string(*device) + ": no such CUDA device");
  }
  return Cuda::ContextOptions{.device = static_cast<int>(*device), .kv_cache = *kv};
}

int run_generate_cuda(const Args& args, const char* program) { return run_generate<Cuda>(args, program); }
int run_chat_cuda(const Args& args, const char* program) { return run_chat<Cuda>(args, program); }

}  // namespace mimo::cli
#endif
