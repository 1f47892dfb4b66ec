// The smallest program over the library: load a checkpoint, feed token ids, decode greedily.
//   quickstart <checkpoint dir> [n]
#include <mimo/mimo.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: quickstart <checkpoint dir> [n]\n");
    return 2;
  }
  const int n = argc > 2 ? std::atoi(argv[2]) : 8;
  auto model = mimo::Model<mimo::Cpu>::load(argv[1]);
  if (!model) {
    std::fprintf(stderr, "%s\n", model.error().describe().c_str());
    return 1;
  }
  auto session = model->new_session({.context = 256});
  if (!session) {
    std::fprintf(stderr, "%s\n", session.error().describe().c_str());
    return 1;
  }
  auto logits = session->append({1, 2, 3});
  for (int i = 0; i < n && logits; ++i) {
    const auto row = logits->last();
    const int32_t next = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    std::printf("%d%s", next, i + 1 < n ? "," : "\n");
    logits = session->append({next});
  }
  if (!logits) {
    std::fprintf(stderr, "%s\n", logits.error().describe().c_str());
    return 1;
  }
  return 0;
}
