#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "quant.h"
#include "specode.h"

namespace specode {

namespace {

// Bounds-checked cursor over the mapped header. Every read checks the end of
// the file so a truncated or corrupt header fails with a message, never a crash.
struct Cursor {
  const uint8_t *base;
  uint64_t size;
  uint64_t pos = 0;
  std::string err;

  bool need(uint64_t n, const char *what) {
    if (!err.empty()) return false;
    if (n > size || pos > size - n) {
      err = std::string("truncated while reading ") + what + " at byte " + std::to_string(pos) +
            " (file has " + std::to_string(size) + " bytes)";
      return false;
    }
    return true;
  }
  template <typename T>
  T read(const char *what) {
    T v{};
    if (!need(sizeof(T), what)) return v;
    std::memcpy(&v, base + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string read_str(const char *what) {
    uint64_t n = read<uint64_t>(what);
    if (!err.empty()) return {};
    if (n > (1ull << 30)) {
      err = std::string("corrupt string length ") + std::to_string(n) + " in " + what;
      return {};
    }
    if (!need(n, what)) return {};
    std::string s(reinterpret_cast<const char *>(base + pos), n);
    pos += n;
    return s;
  }
};

uint64_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::BOOL: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    default: return 0;
  }
}

// Reads one scalar of type t into v (num and inum).
void read_scalar(Cursor &c, GgufValueType t, double *num, int64_t *inum) {
  switch (t) {
    case GgufValueType::U8: *inum = c.read<uint8_t>("u8"); break;
    case GgufValueType::I8: *inum = c.read<int8_t>("i8"); break;
    case GgufValueType::BOOL: *inum = c.read<uint8_t>("bool") != 0; break;
    case GgufValueType::U16: *inum = c.read<uint16_t>("u16"); break;
    case GgufValueType::I16: *inum = c.read<int16_t>("i16"); break;
    case GgufValueType::U32: *inum = c.read<uint32_t>("u32"); break;
    case GgufValueType::I32: *inum = c.read<int32_t>("i32"); break;
    case GgufValueType::U64: *inum = (int64_t)c.read<uint64_t>("u64"); break;
    case GgufValueType::I64: *inum = c.read<int64_t>("i64"); break;
    case GgufValueType::F32: *num = c.read<float>("f32"); *inum = (int64_t)*num; return;
    case GgufValueType::F64: *num = c.read<double>("f64"); *inum = (int64_t)*num; return;
    default: c.err = "bad scalar type"; return;
  }
  *num = (double)*inum;
}

bool valid_type(uint32_t t) { return t <= (uint32_t)GgufValueType::F64; }

}  // namespace

GgufFile::~GgufFile() {
  if (map_) munmap(const_cast<uint8_t *>(map_), size_);
}

bool GgufFile::open(const std::string &path, std::string *err, int *status) {
  path_ = path;
  auto fail = [&](int st, const std::string &msg) {
    *status = st;
    *err = path + ": " + msg;
    return false;
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(SPECODE_ERR_IO, std::string("cannot open (") + std::strerror(errno) + ")");
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail(SPECODE_ERR_IO, "not a regular file");
  }
  size_ = (uint64_t)st.st_size;
  if (size_ < 24) {
    ::close(fd);
    return fail(SPECODE_ERR_FORMAT, "too small to be a GGUF file (" + std::to_string(size_) + " bytes)");
  }
  void *m = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) return fail(SPECODE_ERR_IO, std::string("mmap failed (") + std::strerror(errno) + ")");
  map_ = static_cast<const uint8_t *>(m);

  Cursor c{map_, size_, 0, {}};
  uint32_t magic = c.read<uint32_t>("magic");
  if (magic != 0x46554747u) return fail(SPECODE_ERR_FORMAT, "not a GGUF file (bad magic)");
  version_ = c.read<uint32_t>("version");
  if (version_ < 2 || version_ > 3)
    return fail(SPECODE_ERR_UNSUPPORTED, "GGUF version " + std::to_string(version_) + " is not supported (need 2 or 3)");
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata count");
  if (n_tensors > 1000000 || n_kv > 1000000)
    return fail(SPECODE_ERR_FORMAT, "corrupt header (tensor count " + std::to_string(n_tensors) +
                                        ", metadata count " + std::to_string(n_kv) + ")");

  for (uint64_t i = 0; i < n_kv && c.err.empty(); ++i) {
    std::string key = c.read_str("metadata key");
    uint32_t t = c.read<uint32_t>("metadata type");
    if (!c.err.empty()) break;
    if (!valid_type(t)) return fail(SPECODE_ERR_FORMAT, "metadata '" + key + "' has unknown type " + std::to_string(t));
    GgufValue v;
    v.type = (GgufValueType)t;
    if (v.type == GgufValueType::STRING) {
      v.str = c.read_str(key.c_str());
    } else if (v.type == GgufValueType::ARRAY) {
      uint32_t et = c.read<uint32_t>("array type");
      v.count = c.read<uint64_t>("array length");
      if (!c.err.empty()) break;
      if (!valid_type(et) || et == (uint32_t)GgufValueType::ARRAY)
        return fail(SPECODE_ERR_FORMAT, "metadata '" + key + "' has an array of unsupported type " + std::to_string(et));
      v.elem_type = (GgufValueType)et;
      if (v.elem_type == GgufValueType::STRING) {
        for (uint64_t j = 0; j < v.count && c.err.empty(); ++j) {
          uint64_t n = c.read<uint64_t>("array string length");
          if (c.need(n, key.c_str())) c.pos += n;
        }
      } else {
        uint64_t es = scalar_size(v.elem_type);
        if (v.count > size_ / es + 1 || !c.need(v.count * es, key.c_str())) {
          if (c.err.empty()) c.err = "corrupt array length in " + key;
          break;
        }
        if (v.count <= (1u << 20)) {
          v.nums.resize(v.count);
          for (uint64_t j = 0; j < v.count; ++j) {
            int64_t iv = 0;
            read_scalar(c, v.elem_type, &v.nums[j], &iv);
          }
        } else {
          c.pos += v.count * es;
        }
      }
    } else {
      read_scalar(c, v.type, &v.num, &v.inum);
    }
    kv_[key] = std::move(v);
  }
  if (!c.err.empty()) return fail(SPECODE_ERR_FORMAT, c.err);

  uint64_t alignment = (uint64_t)get_int("general.alignment", 32);
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    return fail(SPECODE_ERR_FORMAT, "general.alignment " + std::to_string(alignment) + " is not a power of two");

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors && c.err.empty(); ++i) {
    GgufTensor t;
    t.name = c.read_str("tensor name");
    t.n_dims = (int)c.read<uint32_t>("tensor dims");
    if (!c.err.empty()) break;
    if (t.n_dims < 1 || t.n_dims > 4)
      return fail(SPECODE_ERR_FORMAT, "tensor '" + t.name + "' has " + std::to_string(t.n_dims) + " dimensions");
    for (int d = 0; d < t.n_dims; ++d) {
      t.ne[d] = (int64_t)c.read<uint64_t>("tensor shape");
      if (t.ne[d] <= 0 || t.ne[d] > (1ll << 40))
        return fail(SPECODE_ERR_FORMAT, "tensor '" + t.name + "' has a bad dimension");
    }
    t.type = c.read<uint32_t>("tensor type");
    t.offset = c.read<uint64_t>("tensor offset");
    tensor_index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  if (!c.err.empty()) return fail(SPECODE_ERR_FORMAT, c.err);
  data_offset_ = (c.pos + alignment - 1) / alignment * alignment;
  if (data_offset_ > size_) return fail(SPECODE_ERR_FORMAT, "truncated: no tensor data after the header");

  for (auto &t : tensors_) {
    int64_t n = t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3];
    if (dtype_supported(t.type)) {
      DType dt = (DType)t.type;
      if (t.ne[0] % dtype_block_elems(dt) != 0)
        return fail(SPECODE_ERR_FORMAT, "tensor '" + t.name + "' row length " + std::to_string(t.ne[0]) +
                                            " is not a multiple of the " + dtype_name(t.type) + " block size");
      t.bytes = dtype_row_bytes(dt, t.ne[0]) * (uint64_t)(n / t.ne[0]);
    } else {
      t.bytes = 0;  // unknown type: checked by the model loader if the tensor is used
    }
    if (t.offset > size_ - data_offset_ || t.bytes > size_ - data_offset_ - t.offset)
      return fail(SPECODE_ERR_FORMAT, "truncated: tensor '" + t.name + "' needs bytes " +
                                          std::to_string(data_offset_ + t.offset) + ".." +
                                          std::to_string(data_offset_ + t.offset + t.bytes) +
                                          " but the file has " + std::to_string(size_));
    t.data = map_ + data_offset_ + t.offset;
  }
  return true;
}

const GgufValue *GgufFile::get(const std::string &key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

std::string GgufFile::get_str(const std::string &key, const std::string &fallback) const {
  const GgufValue *v = get(key);
  return v && v->type == GgufValueType::STRING ? v->str : fallback;
}

int64_t GgufFile::get_int(const std::string &key, int64_t fallback) const {
  const GgufValue *v = get(key);
  if (!v || v->type == GgufValueType::STRING || v->type == GgufValueType::ARRAY) return fallback;
  return v->inum;
}

double GgufFile::get_num(const std::string &key, double fallback) const {
  const GgufValue *v = get(key);
  if (!v || v->type == GgufValueType::STRING || v->type == GgufValueType::ARRAY) return fallback;
  return v->num;
}

const GgufTensor *GgufFile::tensor(const std::string &name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace specode
