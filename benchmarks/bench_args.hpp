// Numbers for the benchmarks' options, parsed strictly: the whole text must be a number within
// the option's range, or the program names the option and stops with status 2 (a mistyped value
// must not quietly run a benchmark with 0, as atoi would).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

namespace bench {

[[noreturn]] inline void bad_value(const char* program, const std::string& option, const char* text,
                                   const std::string& expected) {
  std::fprintf(stderr, "%s: %s needs %s, not '%s'\n", program, option.c_str(), expected.c_str(), text);
  std::exit(2);
}

inline int64_t integer(const char* program, const std::string& option, const char* text, int64_t min = 0,
                       int64_t max = std::numeric_limits<int64_t>::max()) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || v < min || v > max) {
    bad_value(program, option, text,
              "an integer from " + std::to_string(min) +
                  (max == std::numeric_limits<int64_t>::max() ? std::string(" up") : " to " + std::to_string(max)));
  }
  return static_cast<int64_t>(v);
}

inline double number(const char* program, const std::string& option, const char* text, double min, double max) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !(v >= min && v <= max)) {
    char range[64];
    std::snprintf(range, sizeof range, "a number from %g to %g", min, max);
    bad_value(program, option, text, range);
  }
  return v;
}

// "512,4096": integers separated by commas, each within [min, max].
inline std::vector<int64_t> integers(const char* program, const std::string& option, const char* text, int64_t min = 0,
                                     int64_t max = std::numeric_limits<int64_t>::max()) {
  std::vector<int64_t> out;
  const std::string all = text;
  size_t begin = 0;
  while (true) {
    const size_t comma = all.find(',', begin);
    const std::string item = all.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
    out.push_back(integer(program, option, item.c_str(), min, max));
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return out;
}

}  // namespace bench
