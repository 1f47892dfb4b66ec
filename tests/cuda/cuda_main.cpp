// The main of the CUDA test programs. Without a usable CUDA device (no driver, no GPU) a program
// runs only its host-side checks (the test suite "cuda host": option validation, estimates) and
// then exits with 77, which CTest reports as skipped (SKIP_RETURN_CODE); a failing host check
// fails the program as usual.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include <mimo/backend/cuda/cuda.hpp>

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  if (mimo::Cuda::device_count() == 0) {
    context.setOption("test-suite", "cuda host");
    if (const int failed = context.run(); failed != 0 || context.shouldExit()) return failed;
    std::printf("%s: GPU tests skipped: no usable CUDA device (%s)\n", argc > 0 ? argv[0] : "test",
                mimo::Cuda::describe_devices().c_str());
    return 77;
  }
  std::printf("CUDA: %s\n", mimo::Cuda::describe_devices().c_str());
  return context.run();
}
