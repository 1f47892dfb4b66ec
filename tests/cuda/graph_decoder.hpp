// A greedy decoder over Model<Cuda>'s weights in which a whole forward pass, from the embedding to
// the device-side argmax, runs inside one Cuda::forward (a CUDA graph once it repeats): what
// Session<Cuda>::append does once the session wraps its chunk in the backend's forward hook (see
// the proposal in the CUDA backend's notes). Used by the CUDA tests (against Session<Cuda>) and by
// bench_cuda (decode and verification speed with graphs).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <mimo/cuda.hpp>

namespace cuda_test {

class GraphDecoder {
 public:
  // A decoder for up to `capacity` tokens in forward chunks of up to `batch` rows.
  static mimo::Expected<GraphDecoder> create(const mimo::Model<mimo::Cuda>& model, int64_t capacity, int64_t batch,
                                             const mimo::Cuda::ContextOptions& options = {}) {
    const mimo::ModelConfig& c = model.config();
    GraphDecoder d(model);
    d.capacity_ = capacity;
    d.batch_ = batch;
    const int64_t max_cols = std::max({c.hidden_size * 2, c.intermediate_size, c.q_dim()});
    auto ctx = mimo::Cuda::make_context(options, mimo::attention_shape(c), capacity, max_cols);
    if (!ctx) return std::move(ctx).error();
    d.ctx_ = std::move(*ctx);
    if (auto s = mimo::Cuda::make_kv_cache(d.ctx_, d.kv_, c.num_hidden_layers, mimo::attention_shape(c), capacity); !s) {
      return std::move(s).error();
    }
    if (auto s = d.act_.allocate(batch, c); !s) return std::move(s).error();
    auto hidden = mimo::Cuda::rows(d.hidden_buf_, batch, c.hidden_size, "hidden");
    if (!hidden) return std::move(hidden).error();
    auto logits = mimo::Cuda::rows(d.logits_buf_, batch, c.vocab_size, "logits");
    if (!logits) return std::move(logits).error();
    return d;
  }

  // Runs `tokens` (at most `batch`) at the next positions; `all_rows`: logits and argmax for every
  // row (verification), else for the last. The argmax ids come back in `ids`.
  mimo::Status step(std::span<const int32_t> tokens, bool all_rows, std::vector<int32_t>& ids) {
    const mimo::ModelConfig& c = model_.config();
    const auto& w = model_.weights();
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n < 1 || n > batch_ || size_ + n > capacity_) return mimo::Error(mimo::Errc::invalid_argument, "GraphDecoder: bad step");
    positions_.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) positions_[static_cast<size_t>(i)] = size_ + i;
    const int64_t out_rows = all_rows ? n : 1;
    mimo::Activations<mimo::Cuda>& a = act_.with_rows(n);
    const mimo::Rows hidden{hidden_buf_.data(), n, c.hidden_size, c.hidden_size};
    logits_ = mimo::Rows{logits_buf_.data(), out_rows, c.vocab_size, c.vocab_size};
    const int64_t length = size_;
    auto body = [&](mimo::Cuda::Context& ctx) -> mimo::Status {
      mimo::Cuda::embed(ctx, w.embed_tokens, tokens, a.x);
      if (auto s = mimo::main_stack<mimo::Cuda>(ctx, c, w, kv_, length, positions_, a, hidden, nullptr); !s) return s;
      mimo::Cuda::linear(ctx, hidden.slice(n - out_rows, out_rows), {{&w.lm_head, nullptr, logits_}});
      mimo::Cuda::argmax_rows(ctx, logits_);
      return mimo::ok();
    };
    if (auto s = mimo::Cuda::forward(ctx_, body); !s) return s;
    ids.resize(static_cast<size_t>(out_rows));
    if (auto s = mimo::Cuda::read_argmax(ctx_, ids); !s) return s;
    size_ += n;
    return mimo::ok();
  }

  // Forgets tokens from `length` on.
  void truncate(int64_t length) { size_ = std::min(size_, length); }
  int64_t size() const { return size_; }

  // The logits rows of the last step, to host memory.
  mimo::Status logits(std::vector<float>& out) {
    out.resize(static_cast<size_t>(logits_.count * logits_.width));
    return mimo::Cuda::to_host(ctx_, logits_, out.data());
  }
  mimo::Cuda::Context& context() { return ctx_; }
  const mimo::Cuda::KvCache& kv_cache() const { return kv_; }

 private:
  explicit GraphDecoder(mimo::Model<mimo::Cuda> model) : model_(std::move(model)) {}

  mimo::Model<mimo::Cuda> model_;
  mimo::Cuda::Context ctx_;
  mimo::Cuda::KvCache kv_;
  mimo::Activations<mimo::Cuda> act_;
  mimo::Cuda::Buffer hidden_buf_, logits_buf_;
  mimo::Rows logits_{};
  std::vector<int64_t> positions_;
  int64_t capacity_ = 0, batch_ = 0, size_ = 0;
};

}  // namespace cuda_test
