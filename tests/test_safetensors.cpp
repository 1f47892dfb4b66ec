// The safetensors header parser against crafted files: every malformed size, offset, dtype or
// shape is an error value that names the file and the tensor, never a crash or an
// out-of-bounds read.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include <mimo/io/safetensors.hpp>
#include <mimo/io/safetensors_writer.hpp>

#include "support.hpp"

namespace {

// A file: 8-byte length (or `declared_length`), the header text, then `data_bytes` zero bytes.
std::vector<unsigned char> craft(const std::string& header, uint64_t data_bytes, uint64_t declared_length = UINT64_MAX) {
  const uint64_t len = declared_length == UINT64_MAX ? header.size() : declared_length;
  std::vector<unsigned char> f;
  f.reserve(8 + header.size() + data_bytes);
  for (int i = 0; i < 8; ++i) f.push_back(static_cast<unsigned char>(len >> (8 * i)));
  for (char c : header) f.push_back(static_cast<unsigned char>(c));
  for (uint64_t i = 0; i < data_bytes; ++i) f.push_back(0);
  return f;
}

mimo::Expected<mimo::io::SafetensorsHeader> parse(const std::vector<unsigned char>& f,
                                                  const mimo::io::SafetensorsLimits& limits = {}) {
  return mimo::io::parse_safetensors_header(reinterpret_cast<const std::byte*>(f.data()), f.size(), f.size(),
                                            "crafted.safetensors", limits);
}

// The parse must fail with a message containing every one of `needles`.
void expect_error(const std::vector<unsigned char>& f, std::initializer_list<std::string> needles,
                  const mimo::io::SafetensorsLimits& limits = {}) {
  auto h = parse(f, limits);
  REQUIRE_FALSE(h.has_value());
  const std::string& msg = h.error().message();
  CHECK(msg.find("crafted.safetensors") != std::string::npos);
  for (const auto& n : needles) CHECK_MESSAGE(msg.find(n) != std::string::npos, "message: ", msg, " lacks: ", n);
}

const std::string kGood = R"({"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})";

}  // namespace

TEST_CASE("safetensors: a valid header parses with names, dtypes, shapes and offsets") {
  auto h = parse(craft(kGood, 20));
  REQUIRE(h.has_value());
  REQUIRE(h->tensors.size() == 2);
  const auto* a = h->find("a");
  REQUIRE(a != nullptr);
  CHECK(a->dtype == mimo::DType::bf16);
  CHECK(a->shape == std::vector<int64_t>{2, 3});
  CHECK(a->begin == 0);
  CHECK(a->end == 12);
  CHECK(h->find("b")->dtype == mimo::DType::f32);
  CHECK(h->find("c") == nullptr);
  CHECK(h->data_offset == 8 + kGood.size());
  REQUIRE(h->metadata.size() == 1);
  CHECK(h->metadata[0].second == "pt");
}

TEST_CASE("safetensors: sizes of the file and the header") {
  expect_error({1, 2, 3}, {"too short"});
  expect_error(craft(kGood, 20, 1ull << 63), {"header length 9223372036854775808", "exceeds the limit"});
  expect_error(craft(kGood, 20, kGood.size() + 100), {"larger than the file"});
  expect_error(craft("[1,2]", 0), {"does not start with a JSON object"});
  expect_error(craft("{\"a\":", 0), {"invalid JSON"});
  expect_error(craft("{}", 0, 0), {"does not start with a JSON object"});
}

TEST_CASE("safetensors: dtypes, shapes and offsets") {
  expect_error(craft(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2), {"'w'", "unknown dtype 'Q4'"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), {"'w'", "non-negative"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
               {"'w'", "overflows 64 bits"});
  expect_error(craft(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8),
               {"'w'", "overflows 64 bits"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), {"'w'", "reversed"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), {"'w'", "past the end of the data"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), {"'w'", "needs 12 bytes"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), {"'w'", "data_offsets"});
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[2]}})", 8), {"'w'", "data_offsets"});
  expect_error(craft(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), {"'w'", "dtype"});
  expect_error(craft(R"({"w":[1,2]})", 8), {"'w'", "not an object"});
  expect_error(craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
               {"'a'", "'b'", "overlapping"});
  expect_error(craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16),
               {"'a'", "listed twice"});
  expect_error(craft(R"({"__metadata__":{"n":1}})", 0), {"__metadata__"});
  // Empty tensors occupy no bytes and may share an offset.
  CHECK(parse(craft(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8))
            .has_value());
}

TEST_CASE("safetensors: limits on rank and tensor count") {
  expect_error(craft(R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", 4), {"rank"});
  std::string many = "{";
  for (int i = 0; i < 20; ++i) {
    many += (i ? "," : "") + std::string("\"t") + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" +
            std::to_string(4 * i) + "," + std::to_string(4 * i + 4) + "]}";
  }
  many += "}";
  CHECK(parse(craft(many, 80)).has_value());
  expect_error(craft(many, 80), {"more than 10 tensors"}, mimo::io::SafetensorsLimits{.max_tensors = 10});
}

TEST_CASE("safetensors: the writer's files read back through the mapped parser") {
  test::TempDir dir;
  const auto path = dir / "w.safetensors";
  std::vector<mimo::io::TensorSpec> specs = {{"x", mimo::DType::f32, {3}}, {"y \"quoted\"", mimo::DType::bf16, {2, 2}}};
  {
    auto w = mimo::io::SafetensorsWriter::create(path, specs);
    REQUIRE(w.has_value());
    const float x[3] = {1.5f, -2.0f, 3.25f};
    REQUIRE(w->write(x, sizeof x).has_value());
    const uint16_t y[4] = {mimo::f32_to_bf16(1.0f), mimo::f32_to_bf16(2.0f), mimo::f32_to_bf16(-3.0f), mimo::f32_to_bf16(0.5f)};
    CHECK_FALSE(w->finish().has_value());  // not everything was written yet
    (void)y;
  }
  {
    auto w = mimo::io::SafetensorsWriter::create(path, specs);
    REQUIRE(w.has_value());
    const float x[3] = {1.5f, -2.0f, 3.25f};
    const uint16_t y[4] = {mimo::f32_to_bf16(1.0f), mimo::f32_to_bf16(2.0f), mimo::f32_to_bf16(-3.0f), mimo::f32_to_bf16(0.5f)};
    REQUIRE(w->write(x, sizeof x).has_value());
    REQUIRE(w->write(y, sizeof y).has_value());
    CHECK_FALSE(w->write(y, 1).has_value());  // past the declared size
    REQUIRE(w->finish().has_value());
  }
  auto f = mimo::io::SafetensorsFile::open(path);
  REQUIRE_MESSAGE(f.has_value(), (f ? "" : f.error().describe()));
  CHECK(f->header().data_offset % 8 == 0);
  const auto* x = f->find("x");
  REQUIRE(x != nullptr);
  CHECK(mimo::load_float(f->data(*x), x->dtype, 2) == 3.25f);
  const auto* y = f->find("y \"quoted\"");
  REQUIRE(y != nullptr);
  CHECK(mimo::load_float(f->data(*y), y->dtype, 2) == -3.0f);

  // Truncating the file by one byte makes the last tensor run past the end.
  auto bytes = test::read_bytes(path);
  bytes.pop_back();
  test::write_bytes(path, bytes);
  auto cut = mimo::io::SafetensorsFile::open(path);
  REQUIRE_FALSE(cut.has_value());
  CHECK(cut.error().message().find("past the end") != std::string::npos);
  CHECK(cut.error().message().find(path.string()) != std::string::npos);
}

TEST_CASE("dtype conversions: bf16 and f16 round trips and rounding") {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 1e-3f, 3.14159f}) {
    CHECK(mimo::f16_to_f32(mimo::f32_to_f16(v)) == doctest::Approx(v).epsilon(1e-3));
    CHECK(mimo::bf16_to_f32(mimo::f32_to_bf16(v)) == doctest::Approx(v).epsilon(1e-2));
  }
  // Every f16 value survives f16 -> f32 -> f16 exactly (NaNs stay NaN).
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = mimo::f16_to_f32(static_cast<uint16_t>(h));
    if (f != f) {
      CHECK(mimo::f16_to_f32(mimo::f32_to_f16(f)) != mimo::f16_to_f32(mimo::f32_to_f16(f)));
      continue;
    }
    REQUIRE(mimo::f32_to_f16(f) == h);
  }
  CHECK(mimo::f32_to_f16(1e6f) == 0x7c00);                    // overflow to infinity
  CHECK(mimo::f32_to_bf16(1.0f + 1.0f / 256.0f) == 0x3f80);   // ties to even
  CHECK(mimo::f32_to_bf16(1.0f + 3.0f / 256.0f) == 0x3f82);
  CHECK(mimo::parse_dtype("BF16") == mimo::DType::bf16);
  CHECK_FALSE(mimo::parse_dtype("bf16").has_value());
}
