// Instruction sets the CPU kernels can use, detected at run time so one build runs well on any
// x86-64 machine: kernels carry per-function target attributes and the consumer needs no -march.
#pragma once

#include <string_view>

namespace mimo::cpu {

enum class Isa {
  scalar,  // portable C++, always available (and what other architectures use for now)
  avx2,    // AVX2 + FMA + F16C
  avx512,  // AVX-512 F/BW/VL/DQ
};

constexpr std::string_view to_string(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define MIMO_X86 1
#define MIMO_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define MIMO_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#else
#define MIMO_X86 0
#endif

// The best instruction set this machine supports (the OS must save the wider registers too,
// which __builtin_cpu_supports checks).
inline Isa detect_isa() {
#if MIMO_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::scalar;
}

// Whether this machine can run kernels of `isa` (tests force each available path).
inline bool isa_supported(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(detect_isa()); }

}  // namespace mimo::cpu
