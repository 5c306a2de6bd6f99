// The safetensors format (Hugging Face), as far as Llama checkpoints need it:
//
//   [8 bytes: N, little-endian u64][N bytes: JSON header][raw little-endian data]
//   header = {"__metadata__": {str: str}?,
//             "<name>": {"dtype": "BF16"|"F16"|"F32", "shape": [...],
//                        "data_offsets": [begin, end]}, ...}
//
// offsets are relative to the data section. The reader memory-maps the file
// and validates the whole header before any tensor is touched: a truncated
// file, offsets that lie (outside the file, overlapping, not numel * element
// size), a bad JSON header: IoError (exit 3) naming the file and tensor; a
// dtype ringtrain does not read: UsageError (exit 2) naming it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace rt {

enum class StDType { kF32, kF16, kBF16 };
const char* st_dtype_name(StDType t);  // "F32" | "F16" | "BF16"
size_t st_dtype_size(StDType t);

struct StTensorInfo {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  uint64_t begin = 0, end = 0;  // byte offsets in the data section
};

// A memory-mapped .safetensors file. Pages a tensor touched are released
// after it is read (release_pages), so reading a whole shard keeps peak
// memory near one tensor, not the shard.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  // In data-offset order (the order reading is sequential in).
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }
  const StTensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_bytes() const { return size_; }

  // The tensor converted to float32 into out[0, numel); exact for all three dtypes.
  void read_f32(const StTensorInfo& t, float* out) const;
  // The tensor's raw little-endian bytes (a view into the mapping).
  const unsigned char* raw(const StTensorInfo& t) const { return data_ + t.begin; }

 private:
  void release_pages(const StTensorInfo& t) const;

  std::string path_;
  int fd_ = -1;
  unsigned char* map_ = nullptr;
  uint64_t size_ = 0;
  const unsigned char* data_ = nullptr;  // start of the data section
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: name, dtype, shape and a producer that fills its
// float32 values (called once, while writing, so only one tensor is in
// memory at a time).
struct StTensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  std::function<void(std::vector<float>&)> fill;  // resizes and fills numel floats
};

// Writes a .safetensors file with every tensor stored as `dtype` (F32 or
// BF16, round to nearest even) in the given order, 8-byte aligned header
// (padded with spaces, as the reference writer does), and __metadata__.
// Writes to path + ".tmp" and renames; IoError on failure.
void write_safetensors(const std::string& path, StDType dtype,
                       const std::vector<StTensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata);

// Bytes the tensor data of a file with these tensors takes (for sharding).
uint64_t st_tensor_bytes(StDType dtype, const std::vector<int64_t>& shape);

}  // namespace rt
