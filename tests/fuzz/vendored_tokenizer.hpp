// The vendored MiMo tokenizer (assets/tokenizer), loaded once per process, for the fuzz targets
// that encode or decode with it.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include <mimo/tokenizer.hpp>

namespace fuzz {

// The real MiMo tokenizer from assets/tokenizer (loaded at the first call).
inline const mimo::Tokenizer& vendored_tokenizer() {
  static const mimo::Tokenizer tokenizer = [] {
    auto t = mimo::Tokenizer::load(std::string(MIMO_SOURCE_DIR) + "/assets/tokenizer/tokenizer.json");
    if (!t) {
      std::fprintf(stderr, "cannot load the vendored tokenizer: %s\n", t.error().describe().c_str());
      std::abort();
    }
    return std::move(*t);
  }();
  return tokenizer;
}

}  // namespace fuzz
