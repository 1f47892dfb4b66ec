// Tokenizer speed: loading tokenizer.json, and single-threaded encoding of a mixed corpus in 4 KB
// documents (the goal of issue 3: load < 150 ms, encode >= 10 MB/s; Hugging Face's Rust library
// measured on the same machine: about 1.2 s and 1.5 MB/s).
//
//   bench_tokenizer [path/to/tokenizer.json] [megabytes per part, default 2] [repetitions, default 5]
//
// The corpus has four parts: code (this repository's sources), English (license texts under
// /usr/share/common-licenses and /usr/share/doc), CJK and other scripts (sentences generated from
// fixed syllable lists with a seeded generator). Files that are missing are skipped; generated
// text fills any part that is short. The ids' count and hash are printed as a result check.
// Besides wall-clock time it reports process CPU time (std::clock), which stays meaningful on a
// machine shared with other work: there the wall-clock figures include time spent waiting.
#include <mimo/tokenizer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_args.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }
double cpu_seconds_since(std::clock_t start) { return static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Appends files under `roots` whose extension is in `extensions` (or, if that is empty, whose
// name is `only_name`), until `size`.
void append_files(std::string& out, size_t size, const std::vector<std::filesystem::path>& roots,
                  const std::vector<std::string>& extensions, const std::string& skip_name = "",
                  const std::string& only_name = "") {
  std::vector<std::filesystem::path> files;
  for (const auto& root : roots) {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(root, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_regular_file(ec) || it->file_size(ec) > (1u << 20)) continue;
      const auto& p = it->path();
      if (!skip_name.empty() && p.filename() == skip_name) continue;
      if (!only_name.empty() && p.filename() != only_name) continue;
      if (!extensions.empty() && std::find(extensions.begin(), extensions.end(), p.extension().string()) == extensions.end())
        continue;
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());
  for (int round = 0; round < 64 && out.size() < size && !files.empty(); ++round) {
    for (const auto& f : files) {
      if (out.size() >= size) break;
      out += read_file(f);
      out += '\n';
    }
  }
}

// Sentences from syllables, with spaces (or not, for CJK), punctuation, digits and line breaks.
void append_generated(std::string& out, size_t size, const std::vector<std::string>& syllables, bool spaces,
                      const std::string& full_stop, std::mt19937& rng) {
  while (out.size() < size) {
    const int words = 4 + static_cast<int>(rng() % 12);
    for (int w = 0; w < words; ++w) {
      const int parts = 1 + static_cast<int>(rng() % 3);
      for (int p = 0; p < parts; ++p) out += syllables[rng() % syllables.size()];
      if (rng() % 17 == 0) out += std::to_string(rng() % 100000);
      if (spaces && w + 1 < words) out += ' ';
    }
    out += full_stop;
    out += (rng() % 5 == 0) ? "\n" : (spaces ? " " : "");
  }
}

struct Part {
  std::string name;
  std::string text;
};

std::vector<Part> build_corpus(size_t part_bytes) {
  std::mt19937 rng(2024);
  std::vector<Part> parts(4);
  parts[0].name = "code";
  append_files(parts[0].text, part_bytes, {MIMO_SOURCE_DIR "/include", MIMO_SOURCE_DIR "/tests", MIMO_SOURCE_DIR "/tools"},
               {".hpp", ".cpp", ".h", ".py", ".txt", ".cmake"}, "unicode_tables.hpp");
  append_generated(parts[0].text, part_bytes,
                   {"int ", "x", "_i", " = ", "(", ")", "{\n  ", "}\n", "return ", "0", ";\n", "if ", "for ", "auto ",
                    "std::", "vector<", ">", "->", "++", "  "},
                   false, ";\n", rng);
  parts[1].name = "English";
  append_files(parts[1].text, part_bytes, {"/usr/share/common-licenses"}, {});
  append_files(parts[1].text, part_bytes, {"/usr/share/doc"}, {}, "", "copyright");
  append_generated(parts[1].text, part_bytes,
                   {"the", "cat", "ship", "sail", "or", "and", "is", "play", "er", "ing", "ed", "won't", "it's", "we'll"},
                   true, ".", rng);
  parts[2].name = "CJK";
  append_generated(parts[2].text, part_bytes,
                   {"我们", "的", "游戏", "世界", "玩家", "船", "猫", "今天", "天气", "很", "好", "日本語", "の", "テキスト",
                    "です", "ます", "한국어", "텍스트", "입니다", "고양이", "배", "「", "」", "、"},
                   false, "。", rng);
  parts[3].name = "other scripts";
  append_generated(parts[3].text, part_bytes,
                   {"при", "вет", "мир", "кот", "ко", "ра", "бль", "مر", "حبا", "بال", "عا", "لم", "नम", "स्ते", "दु",
                    "नि", "या", "γει", "ά", "σου", "κό", "σμε", "สวัส", "ดี", "ครับ", "שָׁ", "לוֹם", "café", "naïve", "Ångström"},
                   true, ". ", rng);
  for (auto& p : parts) p.text.resize(std::min(p.text.size(), part_bytes));
  return parts;
}

// Cuts text into documents of about 4 KB, at character boundaries.
std::vector<std::string_view> documents(std::string_view text) {
  std::vector<std::string_view> docs;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + 4096);
    while (end < text.size() && end > pos && (static_cast<uint8_t>(text[end]) & 0xC0) == 0x80) --end;
    docs.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return docs;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : MIMO_SOURCE_DIR "/assets/tokenizer/tokenizer.json";
  const size_t part_mb = argc > 2 ? static_cast<size_t>(bench::integer("bench_tokenizer", "the part size in MB", argv[2], 1, 1024)) : 2;
  const int repetitions = argc > 3 ? static_cast<int>(bench::integer("bench_tokenizer", "the repetition count", argv[3], 1, 1000)) : 5;

  // Load: median of several loads.
  std::vector<double> load_ms, load_cpu_ms;
  std::optional<mimo::Tokenizer> tokenizer;
  for (int i = 0; i < std::max(repetitions, 9); ++i) {
    const auto start = Clock::now();
    const std::clock_t cpu_start = std::clock();
    auto loaded = mimo::Tokenizer::load(path);
    load_ms.push_back(seconds_since(start) * 1e3);
    load_cpu_ms.push_back(cpu_seconds_since(cpu_start) * 1e3);
    if (!loaded) {
      std::fprintf(stderr, "bench_tokenizer: %s\n", loaded.error().describe().c_str());
      return 1;
    }
    tokenizer.emplace(std::move(loaded).value());
  }
  std::printf("tokenizer: %s\n", path.c_str());
  std::printf("load tokenizer.json: median %.1f ms of %zu (min %.1f, max %.1f), CPU time median %.1f ms\n",
              median(load_ms), load_ms.size(), *std::min_element(load_ms.begin(), load_ms.end()),
              *std::max_element(load_ms.begin(), load_ms.end()), median(load_cpu_ms));
  std::printf("  %d ids, %zu merges, %.1f MB of tables\n\n", tokenizer->vocab_size(), tokenizer->merge_count(),
              static_cast<double>(tokenizer->memory_bytes()) / 1e6);

  const std::vector<Part> parts = build_corpus(part_mb << 20);
  std::printf("%-14s %9s %8s %10s %8s %10s %10s %18s\n", "corpus part", "MB", "docs", "tokens", "B/token", "MB/s",
              "MB/s CPU", "ids hash");
  std::vector<int32_t> ids;
  double all_bytes = 0, all_seconds = 0, all_cpu_seconds = 0;
  size_t all_tokens = 0;
  for (const Part& part : parts) {
    const auto docs = documents(part.text);
    std::vector<double> rates, cpu_rates;
    size_t tokens = 0;
    uint64_t hash = 1469598103934665603ull;
    double best_seconds = 0;
    for (int r = 0; r < repetitions; ++r) {
      tokens = 0;
      hash = 1469598103934665603ull;
      const auto start = Clock::now();
      const std::clock_t cpu_start = std::clock();
      for (std::string_view doc : docs) {
        ids.clear();
        if (!tokenizer->encode_append(doc, ids)) return 1;
        tokens += ids.size();
        for (int32_t id : ids) hash = (hash ^ static_cast<uint32_t>(id)) * 1099511628211ull;
      }
      const double s = seconds_since(start);
      rates.push_back(static_cast<double>(part.text.size()) / 1e6 / s);
      cpu_rates.push_back(static_cast<double>(part.text.size()) / 1e6 / std::max(1e-9, cpu_seconds_since(cpu_start)));
      best_seconds = r == 0 ? s : std::min(best_seconds, s);
    }
    // Result check: a document decodes back to its NFC form.
    ids.clear();
    if (!tokenizer->encode_append(docs.front(), ids)) return 1;
    const bool round_trip = tokenizer->decode(ids).value() == mimo::detail::to_nfc(docs.front());
    const double rate = median(rates), cpu_rate = median(cpu_rates);
    std::printf("%-14s %9.2f %8zu %10zu %8.2f %10.1f %10.1f %18llx%s\n", part.name.c_str(),
                static_cast<double>(part.text.size()) / 1e6, docs.size(), tokens,
                static_cast<double>(part.text.size()) / static_cast<double>(tokens), rate, cpu_rate,
                static_cast<unsigned long long>(hash), round_trip ? "" : "  ROUND TRIP FAILED");
    all_bytes += static_cast<double>(part.text.size());
    all_seconds += static_cast<double>(part.text.size()) / 1e6 / rate;
    all_cpu_seconds += static_cast<double>(part.text.size()) / 1e6 / cpu_rate;
    all_tokens += tokens;
  }
  std::printf("%-14s %9.2f %8s %10zu %8.2f %10.1f %10.1f\n", "all", all_bytes / 1e6, "", all_tokens,
              all_bytes / static_cast<double>(all_tokens), all_bytes / 1e6 / all_seconds, all_bytes / 1e6 / all_cpu_seconds);
  std::printf("\nencode: single thread, 4 KB documents, median of %d repetitions per part\n", repetitions);
  return 0;
}
