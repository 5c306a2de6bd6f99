#include "trainer/hf/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "model/tensor.h"

namespace rt {

namespace {

// The reference implementation refuses headers over 100 MB; so do we (a
// lying length would otherwise make us parse gigabytes).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      u = sign | (uint32_t(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool parse_dtype(const std::string& s, StDType* t) {
  if (s == "F32") *t = StDType::kF32;
  else if (s == "F16") *t = StDType::kF16;
  else if (s == "BF16") *t = StDType::kBF16;
  else return false;
  return true;
}

}  // namespace

const char* st_dtype_name(StDType t) {
  switch (t) {
    case StDType::kF32: return "F32";
    case StDType::kF16: return "F16";
    case StDType::kBF16: return "BF16";
  }
  return "?";
}

size_t st_dtype_size(StDType t) { return t == StDType::kF32 ? 4 : 2; }

uint64_t st_tensor_bytes(StDType dtype, const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) n *= uint64_t(d);
  return n * st_dtype_size(dtype);
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  const std::string what = "safetensors file " + path + ": ";
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw IoError(what + "cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw IoError(what + "cannot stat: " + std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd_);
    throw IoError(what + "is a directory");
  }
  size_ = uint64_t(st.st_size);
  auto fail = [&](const std::string& why) -> void {
    if (map_) ::munmap(map_, size_);
    map_ = nullptr;
    ::close(fd_);
    fd_ = -1;
    throw IoError(what + why);
  };
  if (size_ < 8)
    fail("truncated: " + std::to_string(size_) +
         " bytes, shorter than the 8-byte header length (re-download or re-export it)");
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (m == MAP_FAILED) fail(std::string("cannot memory-map: ") + std::strerror(errno));
  map_ = static_cast<unsigned char*>(m);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(map_[i]) << (8 * i);
  if (n > kMaxHeaderBytes)
    fail("header length " + std::to_string(n) + " bytes is implausible (> 100 MB): not a "
         "safetensors file, or a corrupt one");
  if (8 + n > size_)
    fail("truncated: the header says it is " + std::to_string(n) + " bytes but the file has " +
         std::to_string(size_ - 8) + " bytes after the length (re-download or re-export it)");
  data_ = map_ + 8 + n;
  const uint64_t data_bytes = size_ - 8 - n;
  nlohmann::json h = nlohmann::json::parse(map_ + 8, map_ + 8 + n, nullptr, false);
  if (h.is_discarded() || !h.is_object())
    fail("the header is not a JSON object (corrupt file)");
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) fail("__metadata__ is not an object");
      for (auto m2 = e.begin(); m2 != e.end(); ++m2)
        metadata_[m2.key()] = m2.value().is_string() ? m2.value().get<std::string>()
                                                     : m2.value().dump();
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets"))
      fail(where + " needs dtype, shape and data_offsets in the header (corrupt file)");
    StTensorInfo t;
    t.name = name;
    if (!e["dtype"].is_string()) fail(where + ": dtype is not a string");
    const std::string dt = e["dtype"].get<std::string>();
    if (!parse_dtype(dt, &t.dtype)) {
      ::munmap(map_, size_);
      map_ = nullptr;
      ::close(fd_);
      fd_ = -1;
      throw UsageError(what + where + " has dtype " + dt +
                       ", which ringtrain does not import (BF16, F16 and F32 are supported; "
                       "convert the model, e.g. with transformers' torch_dtype=torch.bfloat16)");
    }
    const nlohmann::json& sh = e["shape"];
    if (!sh.is_array()) fail(where + ": shape is not an array");
    t.numel = 1;
    for (const auto& d : sh) {
      if (!d.is_number_unsigned()) fail(where + ": shape " + sh.dump() + " is not a list of sizes");
      const uint64_t v = d.get<uint64_t>();
      if (v > (uint64_t(1) << 40) || (t.numel > 0 && uint64_t(t.numel) * v > (uint64_t(1) << 40)))
        fail(where + ": shape " + sh.dump() + " is implausibly large (corrupt header)");
      t.shape.push_back(int64_t(v));
      t.numel *= int64_t(v);
    }
    const nlohmann::json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      fail(where + ": data_offsets " + off.dump() + " is not [begin, end]");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.begin > t.end)
      fail(where + ": data_offsets " + off.dump() + " has begin > end (corrupt header)");
    if (t.end > data_bytes)
      fail(where + ": data_offsets " + off.dump() + " end past the data section (" +
           std::to_string(data_bytes) + " bytes): the file is truncated or the header lies");
    if (t.end - t.begin != uint64_t(t.numel) * st_dtype_size(t.dtype))
      fail(where + ": data_offsets " + off.dump() + " span " + std::to_string(t.end - t.begin) +
           " bytes, but dtype " + dt + " x shape " + sh.dump() + " needs " +
           std::to_string(uint64_t(t.numel) * st_dtype_size(t.dtype)) + " (corrupt header)");
    tensors_.push_back(std::move(t));
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 0; i + 1 < tensors_.size(); ++i)
    if (tensors_[i].end > tensors_[i + 1].begin)
      fail("tensors '" + tensors_[i].name + "' and '" + tensors_[i + 1].name +
           "' overlap in the data section (corrupt header)");
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = i;
}

SafetensorsReader::~SafetensorsReader() {
  if (map_) ::munmap(map_, size_);
  if (fd_ >= 0) ::close(fd_);
}

const StTensorInfo* SafetensorsReader::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsReader::read_f32(const StTensorInfo& t, float* out) const {
  const unsigned char* p = raw(t);
  const size_t n = size_t(t.numel);
  // Little-endian host (x86-64, aarch64): the bytes are the values.
  switch (t.dtype) {
    case StDType::kF32:
      std::memcpy(out, p, n * 4);
      break;
    case StDType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = bf16_to_f32(h);
      }
      break;
    case StDType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = f16_to_f32(h);
      }
      break;
  }
  release_pages(t);
}

void SafetensorsReader::release_pages(const StTensorInfo& t) const {
  // Whole pages inside the tensor's bytes leave our resident set (the page
  // cache keeps them; nothing is written back: the mapping is read-only).
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  const uint64_t a = uint64_t(data_ - map_) + t.begin, b = uint64_t(data_ - map_) + t.end;
  const uint64_t lo = (a + page - 1) / page * page, hi = b / page * page;
  if (hi > lo) ::madvise(map_ + lo, hi - lo, MADV_DONTNEED);
}

void write_safetensors(const std::string& path, StDType dtype,
                       const std::vector<StTensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  if (dtype == StDType::kF16) throw UsageError("safetensors export: F16 is not supported");
  nlohmann::ordered_json h;
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t at = 0;
  for (const StTensorToWrite& t : tensors) {
    const uint64_t bytes = st_tensor_bytes(dtype, t.shape);
    h[t.name] = {{"dtype", st_dtype_name(dtype)},
                 {"shape", t.shape},
                 {"data_offsets", {at, at + bytes}}};
    at += bytes;
  }
  std::string header = h.dump();
  while ((8 + header.size()) % 8) header += ' ';
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw IoError("cannot create " + tmp + ": " + std::strerror(errno));
  bool ok = true;
  auto put = [&](const void* p, size_t n) {
    if (ok && n && std::fwrite(p, 1, n, f) != n) ok = false;
  };
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = (uint64_t(header.size()) >> (8 * i)) & 0xff;
  put(len, 8);
  put(header.data(), header.size());
  std::vector<float> values;
  std::vector<uint16_t> half;
  for (const StTensorToWrite& t : tensors) {
    values.clear();
    t.fill(values);
    const uint64_t want = st_tensor_bytes(StDType::kF32, t.shape) / 4;
    if (values.size() != want) {
      std::fclose(f);
      std::remove(tmp.c_str());
      throw Error(kExitOther, "safetensors writer: tensor " + t.name + " produced " +
                                  std::to_string(values.size()) + " values, expected " +
                                  std::to_string(want));
    }
    if (dtype == StDType::kF32) {
      put(values.data(), values.size() * 4);
    } else {
      half.resize(values.size());
      for (size_t i = 0; i < values.size(); ++i) half[i] = f32_to_bf16(values[i]);
      put(half.data(), half.size() * 2);
    }
  }
  if (std::fflush(f) != 0) ok = false;
  if (ok && ::fsync(::fileno(f)) != 0) ok = false;
  const int err = errno;
  if (std::fclose(f) != 0) ok = false;
  if (!ok) {
    std::remove(tmp.c_str());
    throw IoError("cannot write " + path + ": " + std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e2 = errno;
    std::remove(tmp.c_str());
    throw IoError("cannot rename " + tmp + " to " + path + ": " + std::strerror(e2));
  }
}

}  // namespace rt
