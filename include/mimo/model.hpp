// Model<Backend>: a loaded checkpoint, immutable after loading and shared by any number of
// sessions on any threads (copying a Model shares it). Sessions: see session.hpp.
//
//   auto model = mimo::Model<mimo::Cpu>::load("MiMo-7B-RL");          // Expected<Model<Cpu>>
//   if (!model) { log(model.error().describe()); return; }
//   auto session = model->new_session({.context = 4096});               // Expected<Session<Cpu>>
//   auto logits = session->append(prompt_ids);                          // logits of the last row
//   int next = argmax(logits->last());
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/backend/backend.hpp"
#include "mimo/config.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/error.hpp"
#include "mimo/io/checkpoint.hpp"
#include "mimo/quantize.hpp"
#include "mimo/transformer.hpp"
#include "mimo/weights.hpp"

namespace mimo {

struct LoadProgress {
  std::string_view stage;  // "reading weights", "quantizing weights" or "preparing layers"
  uint64_t done = 0;       // bytes read, or layers prepared
  uint64_t total = 0;
  double fraction = 0.0;   // overall, 0..1
};

struct LoadOptions {
  // Called as loading advances; return false to cancel (load() then returns Errc::cancelled).
  std::function<bool(const LoadProgress&)> on_progress{};
  // Read every weight page once while loading, so the first tokens are not slowed by page faults
  // and a file that cannot be read fails here rather than during generation.
  bool preload = true;
  // Back the mapped weights with 2 MiB pages where the OS allows (Linux): decoding streams every
  // weight per token, and 4 KiB mappings cost a TLB miss per page (several times slower decoding
  // on some virtual machines). With preload, a file cached in small pages (on Linux 6.7+, the
  // parts of it cached in small pages) is read once more.
  bool huge_pages = true;
  io::SafetensorsLimits limits{};
  // Quantize the products while loading (mimo/quantize.hpp): each float weight is read once,
  // quantized into memory by `quantize.threads` threads, and its mapped pages are handed back,
  // so memory stays near the quantized model's size (preload is skipped: quantizing reads the
  // weights). Weights the checkpoint already stores quantized are used as they are. CPU only.
  QuantizeOptions quantize{};
  // The MTP drafter's logits through a copy of lm_head quantized to this format (q8 or q4) while
  // loading: lm_head is most of what one MTP step reads (1.24 of 1.7 GB for MiMo-7B in bf16), and
  // drafts are only proposals, so speculative output stays exactly the same; only acceptance may
  // move. Costs the copy's memory (q4: 0.35 GB for MiMo-7B) and a second or two of loading. Not
  // applied when lm_head is already quantized, or the checkpoint has no MTP layers. CPU only.
  QuantType draft_head = QuantType::none;
  // The MTP layers' products (their block and input projection) quantized to this format (q8 or
  // q4) in memory while loading, their mapped pages handed back: they only draft, so the output
  // stays the same. With draft_head = q4 and draft_layers = q8, an MTP step of MiMo-7B reads
  // 0.57 GB instead of 1.7. Layers the checkpoint (or `quantize`) already made quantized are
  // used as they are. CPU only.
  QuantType draft_layers = QuantType::none;
  // The MTP drafter proposes only tokens with ids below this (0: the whole vocabulary), reading
  // just those rows of lm_head (or of the draft_head copy) per step. Byte-level BPE vocabularies
  // such as Qwen2's number their tokens roughly by merge order, so the first ids are the common
  // ones: 32768 of MiMo's 151,680 cuts the head's 1.24 GB (bf16) to 0.27 GB. Drafts are only
  // proposals, so the output stays exactly the same; a token outside the range is never drafted,
  // which costs acceptance where such tokens are frequent. No copy unless draft_head asks for one.
  int64_t draft_vocab = 0;
};

// Memory a model and one session will use, before committing to them.
struct MemoryEstimate {
  uint64_t weights = 0;    // bytes of weights the backend keeps (mapped file pages on the CPU)
  uint64_t kv_cache = 0;   // bytes of the main KV cache at full context
  uint64_t mtp_cache = 0;  // bytes of one MTP step's KV cache at full context
  uint64_t workspace = 0;  // activations and scratch of one forward chunk
  uint64_t total() const { return weights + kv_cache + mtp_cache + workspace; }
};

template <class B>
struct SessionOptions {
  int64_t context = 4096;  // capacity in tokens, at most max_position_embeddings
  int64_t batch = 256;     // rows per forward chunk: a longer append runs in chunks of this many
  typename B::ContextOptions backend{};
};

template <class B>
class Session;

template <class B>
class Model {
 public:
  // Loads a Hugging Face checkpoint directory. Weights stay in the mapped files (CPU) or are
  // uploaded once (GPU). Every tensor is validated against config.json first.
  static Expected<Model> load(const std::filesystem::path& dir, const LoadOptions& options = {});

  // Memory a checkpoint and one session would need, from the headers alone: the weights as
  // load(dir, load) would keep them (quantized while loading, drafter copies), the caches, and
  // the workspace.
  static Expected<MemoryEstimate> estimate_memory(const std::filesystem::path& dir, const LoadOptions& load,
                                                  const SessionOptions<B>& options = {});
  static Expected<MemoryEstimate> estimate_memory(const std::filesystem::path& dir, const SessionOptions<B>& options = {}) {
    return estimate_memory(dir, LoadOptions{}, options);
  }

  const ModelConfig& config() const { return data_->checkpoint.config(); }
  const Checkpoint& checkpoint() const { return data_->checkpoint; }
  const Weights<B>& weights() const { return data_->weights; }
  // The bound tensors (views into the mapping, or into memory for weights quantized on load).
  const ModelTensors& tensors() const { return data_->tensors; }
  // The MTP drafter proposes token ids below this (LoadOptions::draft_vocab): the width of
  // Session::mtp_logits().
  int64_t draft_vocab() const {
    return data_->tensors.draft_head ? data_->tensors.draft_head.rows() : config().vocab_size;
  }
  // Memory this model keeps and a session with `options` would add.
  MemoryEstimate estimate(const SessionOptions<B>& options) const {
    return estimate_for(config(), resident_weight_bytes(data_->tensors), options);
  }

  Expected<Session<B>> new_session(const SessionOptions<B>& options = {}) const;

  static MemoryEstimate estimate_for(const ModelConfig& c, uint64_t weight_bytes, const SessionOptions<B>& o) {
    MemoryEstimate m;
    m.weights = weight_bytes;
    // The cache's element type is the backend's (ContextOptions::kv_cache where the backend has
    // kv_cache_bytes; otherwise fp32).
    auto cache_bytes = [&](int64_t layers) -> uint64_t {
      if constexpr (requires { B::kv_cache_bytes(o.backend, layers, c.num_key_value_heads, c.head_dim, o.context); }) {
        return B::kv_cache_bytes(o.backend, layers, c.num_key_value_heads, c.head_dim, o.context);
      } else {
        return 2ull * c.kv_dim() * sizeof(float) * static_cast<uint64_t>(layers) * static_cast<uint64_t>(o.context);
      }
    };
    m.kv_cache = cache_bytes(c.num_hidden_layers);
    m.mtp_cache = c.num_nextn_predict_layers > 0 ? cache_bytes(1) : 0;
    const uint64_t rows = static_cast<uint64_t>(std::max<int64_t>(1, o.batch));
    m.workspace = rows * sizeof(float) *
                  (2 * c.hidden_size + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.intermediate_size + 2 * c.hidden_size) +
                  sizeof(float) * c.vocab_size;  // one row of logits
    return m;
  }

 private:
  struct Data {
    Checkpoint checkpoint;
    ModelTensors tensors;
    Weights<B> weights;
    std::vector<std::unique_ptr<QuantizedTensor>> quantized;  // weights quantized while loading
    io::TensorInfo draft_rows;  // the leading rows of lm_head that LoadOptions::draft_vocab keeps
  };
  std::shared_ptr<const Data> data_;
};

// ---------------------------------------------------------------------------------------------

template <class B>
Expected<Model<B>> Model<B>::load(const std::filesystem::path& dir, const LoadOptions& options) {
  auto ck = Checkpoint::open(dir, options.limits, options.huge_pages);
  if (!ck) return std::move(ck).error();
  if (auto st = check_draft_vocab(ck->config(), options.draft_vocab); !st) return std::move(st).error();
  auto data = std::make_shared<Data>(Data{std::move(*ck), {}, {}, {}, {}});

  auto report = [&](std::string_view stage, uint64_t done, uint64_t total, double fraction) {
    if (!options.on_progress) return true;
    return options.on_progress(LoadProgress{stage, done, total, fraction});
  };
  const bool quantize = options.quantize.type != QuantType::none;
  const double read_share = options.preload || quantize ? 0.9 : 0.0;
  if (options.preload && !quantize) {
    auto st = data->checkpoint.preload(options.huge_pages, [&](uint64_t done, uint64_t total) {
      return report("reading weights", done, total, read_share * static_cast<double>(done) / static_cast<double>(total));
    });
    if (!st) return std::move(st).error();
  }
  auto tensors = ModelTensors::bind(data->checkpoint);
  if (!tensors) return std::move(tensors).error();
  data->tensors = std::move(*tensors);
  if (quantize) {
    auto st = quantize_in_memory(data->tensors, options.quantize, data->quantized, [&](size_t done, size_t total) {
      return report("quantizing weights", done, total, read_share * static_cast<double>(done) / static_cast<double>(total));
    });
    if (!st) return std::move(st).error();
  }
  ModelTensors& t = data->tensors;
  if (options.draft_layers != QuantType::none) {
    QuantizeOptions qo = options.quantize;
    qo.type = options.draft_layers;
    qo.keep_mtp = false;
    // Progress holds at read_share (the fraction never goes back); the host may still cancel.
    auto st = quantize_in_memory(data->tensors, qo, data->quantized, [&](size_t done, size_t total) {
      return report("quantizing drafter layers", done, total, read_share);
    }, QuantizeScope::drafter);
    if (!st) return std::move(st).error();
  }
  if (options.draft_vocab != 0 && !t.mtp_layers.empty() && options.draft_vocab < t.lm_head.rows()) {
    t.draft_head = leading_rows(t.lm_head, options.draft_vocab, data->draft_rows);
  }
  const TensorView& draft_source = t.draft_head ? t.draft_head : t.lm_head;
  if (options.draft_head != QuantType::none && !t.mtp_layers.empty() && !draft_source.quantized()) {
    QuantizeOptions qo = options.quantize;
    auto pool = cpu::ThreadPool::create(qo.threads);
    if (!pool) return std::move(pool).error();
    auto head = quantize_tensor(draft_source, options.draft_head, quant_group(options.draft_head, qo), qo.with_min, **pool);
    if (!head) return std::move(head).error();
    t.draft_head = (*head)->view;
    data->quantized.push_back(std::move(*head));
  }
  auto weights = prepare_weights<B>(data->tensors, [&](size_t done, size_t total) {
    return report("preparing layers", done, total, read_share + (1.0 - read_share) * static_cast<double>(done) / static_cast<double>(total));
  });
  if (!weights) return std::move(weights).error();
  data->weights = std::move(*weights);
  Model m;
  m.data_ = std::move(data);
  return m;
}

template <class B>
Expected<MemoryEstimate> Model<B>::estimate_memory(const std::filesystem::path& dir, const LoadOptions& load,
                                                   const SessionOptions<B>& options) {
  auto ck = Checkpoint::open(dir, load.limits, /*huge_pages=*/false);
  if (!ck) return std::move(ck).error();
  if (auto st = check_draft_vocab(ck->config(), load.draft_vocab); !st) return std::move(st).error();
  auto tensors = ModelTensors::bind(*ck);
  if (!tensors) return std::move(tensors).error();
  const uint64_t weights = planned_weight_bytes(*tensors, load.quantize, load.draft_layers, load.draft_head, load.draft_vocab);
  return estimate_for(ck->config(), weights, options);
}

template <class B>
Expected<Session<B>> Model<B>::new_session(const SessionOptions<B>& o) const {
  const ModelConfig& c = config();
  if (o.context < 1 || o.context > c.max_position_embeddings) {
    return Error(Errc::invalid_argument, "session context " + std::to_string(o.context) + " is not in [1, " +
                                             std::to_string(c.max_position_embeddings) + "] (max_position_embeddings)");
  }
  if (o.batch < 1 || o.batch > 1 << 16) {
    return Error(Errc::invalid_argument, "session batch " + std::to_string(o.batch) + " is not in [1, 65536]");
  }
  Session<B> s(*this);
  s.capacity_ = o.context;
  s.batch_ = std::min(o.batch, o.context);
  const int64_t max_cols = std::max({c.hidden_size * 2, c.intermediate_size, c.q_dim()});
  auto ctx = B::make_context(o.backend, attention_shape(c), s.capacity_, max_cols);
  if (!ctx) return std::move(ctx).error();
  s.ctx_ = std::move(*ctx);
  if (auto st = B::make_kv_cache(s.ctx_, s.kv_, c.num_hidden_layers, attention_shape(c), s.capacity_); !st) {
    return std::move(st).error();
  }
  if (auto st = s.act_.allocate(s.batch_, c); !st) return std::move(st).error();
  auto chunk_hidden = B::rows(s.chunk_hidden_buf_, s.batch_, c.hidden_size, "hidden states");
  if (!chunk_hidden) return std::move(chunk_hidden).error();
  s.mtp_.resize(static_cast<size_t>(c.num_nextn_predict_layers));
  s.tokens_.reserve(static_cast<size_t>(s.capacity_));
  return s;
}

}  // namespace mimo

#include "mimo/session.hpp"
