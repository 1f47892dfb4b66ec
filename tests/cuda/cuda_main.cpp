// The main of the CUDA test programs: without a usable CUDA device (no driver, no GPU) each
// program says so and exits with 77, which CTest reports as skipped (SKIP_RETURN_CODE).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include <mimo/backend/cuda/cuda.hpp>

int main(int argc, char** argv) {
  if (mimo::Cuda::device_count() == 0) {
    std::printf("%s: skipped: no usable CUDA device (%s)\n", argc > 0 ? argv[0] : "test", mimo::Cuda::describe_devices().c_str());
    return 77;
  }
  std::printf("CUDA: %s\n", mimo::Cuda::describe_devices().c_str());
  doctest::Context context(argc, argv);
  return context.run();
}
