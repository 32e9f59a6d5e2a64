// gguf.h — memory-mapped GGUF reader: header, metadata, tensor table.
// The file stays mapped read-only for the life of the GgufFile; tensor data
// pointers point into the mapping (no copies).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace specode {

enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};

// A metadata value. Scalars are widened into num/inum; strings into str.
// Arrays keep their element type and count; numeric arrays are decoded into
// nums, string arrays only counted (the engine never needs the vocabulary).
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  double num = 0;       // numeric scalars and bools
  int64_t inum = 0;     // integer scalars, exact
  std::string str;      // STRING
  GgufValueType elem_type = GgufValueType::U8;  // ARRAY
  uint64_t count = 0;                           // ARRAY
  std::vector<double> nums;                     // numeric ARRAY elements
};

struct GgufTensor {
  std::string name;
  uint32_t type = 0;     // ggml type id (see quant.h DType)
  int n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the innermost (contiguous) dimension
  uint64_t offset = 0;   // from the start of the data section
  uint64_t bytes = 0;    // size of the data
  const uint8_t *data = nullptr;  // into the mapping
};

class GgufFile {
 public:
  GgufFile() = default;
  ~GgufFile();
  GgufFile(const GgufFile &) = delete;
  GgufFile &operator=(const GgufFile &) = delete;

  // Maps and parses path. On failure returns false and sets *err to a message
  // naming the file and the problem; *status gets a specode_status code.
  bool open(const std::string &path, std::string *err, int *status);

  const std::string &path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t file_size() const { return size_; }
  const uint8_t *bytes() const { return map_; }  // the whole mapped file
  uint64_t data_bytes() const { return size_ - data_offset_; }

  const GgufValue *get(const std::string &key) const;
  std::string get_str(const std::string &key, const std::string &fallback = "") const;
  int64_t get_int(const std::string &key, int64_t fallback) const;
  double get_num(const std::string &key, double fallback) const;

  const GgufTensor *tensor(const std::string &name) const;
  const std::vector<GgufTensor> &tensors() const { return tensors_; }

 private:
  std::string path_;
  uint32_t version_ = 0;
  const uint8_t *map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace specode
