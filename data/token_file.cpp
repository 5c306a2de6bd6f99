// Token file readers and writers (SPEC §7). Error policy: see token_file.h.
#include "data/token_file.h"

#include <hdf5.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "common/errors.h"
#include "common/hdf5.h"
#include "data/tokenizer.h"

namespace rt {
namespace {

const char* kSupported = "supported: .h5, .bin (llm.c), .txt (raw bytes)";
const char* kPrepareHint = "create one with `ringtrain data prepare IN... --out OUT.h5|.bin`";

std::string lower_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  return ext;
}

// Whole file as bytes; IoError naming the path when it cannot be read.
std::string read_file_bytes(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw IoError(path + ": is a directory, expected a token file");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    int err = errno;
    if (err == ENOENT) throw IoError(path + ": no such file");
    throw IoError(path + ": cannot open: " + std::strerror(err));
  }
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.append(buf, n);
  bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw IoError(path + ": read error");
  return bytes;
}

void write_file_bytes(const std::string& path, const void* data, size_t n, std::FILE* f) {
  if (n && std::fwrite(data, 1, n, f) != n) {
    std::fclose(f);
    throw IoError(path + ": write failed: " + std::strerror(errno));
  }
}

void check_tokens_in_vocab(const std::string& path, const TokenData& d) {
  if (d.vocab_size < 1)
    throw UsageError(path + ": vocab_size " + std::to_string(d.vocab_size) + " must be >= 1");
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    if (int64_t(d.tokens[i]) >= d.vocab_size)
      throw UsageError(path + ": token " + std::to_string(d.tokens[i]) + " at index " +
                       std::to_string(i) + " is >= vocab_size " +
                       std::to_string(d.vocab_size));
  }
}

void check_doc_offsets(const std::string& path, const TokenData& d) {
  for (size_t i = 0; i < d.doc_offsets.size(); ++i) {
    if (d.doc_offsets[i] > d.tokens.size() || (i > 0 && d.doc_offsets[i] < d.doc_offsets[i - 1]))
      throw UsageError(path + ": /doc_offsets[" + std::to_string(i) + "] = " +
                       std::to_string(d.doc_offsets[i]) +
                       " is out of order or past the end (" + std::to_string(d.tokens.size()) +
                       " tokens); offsets must be non-decreasing token positions");
  }
}

// ---- .txt ------------------------------------------------------------------

TokenData read_txt(const std::string& path, const Tokenizer* tok) {
  TokenData d;
  if (!tok) {
    d.tokens = tokenize_bytes(read_file_bytes(path));
    return d;
  }
  d.tokens = tok->encode(read_file_bytes(path));
  d.vocab_size = tok->vocab_size();
  d.tokenizer = tok->id();
  return d;
}

// ---- .bin (llm.c) ------------------------------------------------------------

TokenData read_bin(const std::string& path) {
  const std::string bytes = read_file_bytes(path);
  const size_t header_bytes = kLlmcHeaderInts * sizeof(int32_t);
  if (bytes.size() < header_bytes)
    throw UsageError(path + ": truncated llm.c header (" + std::to_string(bytes.size()) +
                     " bytes, expected at least " + std::to_string(header_bytes) + "); " +
                     kPrepareHint);
  int32_t header[kLlmcHeaderInts];
  std::memcpy(header, bytes.data(), header_bytes);
  if (header[0] != kLlmcMagic)
    throw UsageError(path + ": bad magic " + std::to_string(header[0]) + " (expected " +
                     std::to_string(kLlmcMagic) + "): not an llm.c token file; " + kPrepareHint);
  if (header[1] != kLlmcVersion)
    throw UsageError(path + ": unsupported llm.c version " + std::to_string(header[1]) +
                     " (supported: 1 = uint16 tokens); convert it with `ringtrain data "
                     "prepare` or store it as .h5 with uint32 /tokens");
  if (header[2] < 0)
    throw UsageError(path + ": negative token count " + std::to_string(header[2]) +
                     " in the header; " + kPrepareHint);
  const size_t n = size_t(header[2]);
  const size_t expected = header_bytes + n * sizeof(uint16_t);
  if (bytes.size() != expected)
    throw UsageError(path + ": size mismatch: header says " + std::to_string(n) +
                     " tokens (" + std::to_string(expected) + " bytes) but the file has " +
                     std::to_string(bytes.size()) + " bytes" +
                     (bytes.size() < expected ? " (truncated?)" : "") + "; " + kPrepareHint);
  TokenData d;
  d.tokenizer_recorded = false;
  d.tokens.resize(n);
  const char* p = bytes.data() + header_bytes;
  uint32_t max_token = 0;
  for (size_t i = 0; i < n; ++i) {
    uint16_t t;
    std::memcpy(&t, p + 2 * i, 2);
    d.tokens[i] = t;
    max_token = std::max<uint32_t>(max_token, t);
  }
  if (max_token < 256) {
    d.vocab_size = 256;
    d.tokenizer = "bytes";
  } else if (max_token < 50257) {
    d.vocab_size = 50257;
    d.tokenizer = "gpt2";
  } else {
    d.vocab_size = 65536;
    d.tokenizer = "unknown";
  }
  return d;
}

// ---- .h5 -------------------------------------------------------------------

std::string type_name(hid_t type) {
  H5T_class_t cls = H5Tget_class(type);
  size_t size = H5Tget_size(type);
  if (cls == H5T_INTEGER) {
    bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    return std::string(is_signed ? "int" : "uint") + std::to_string(8 * size);
  }
  if (cls == H5T_FLOAT) return "float" + std::to_string(8 * size);
  if (cls == H5T_STRING) return "string";
  return "non-numeric type";
}

// Number of elements of a 1-D dataset; UsageError otherwise.
hsize_t dataset_length_1d(const std::string& path, const char* name, hid_t dset) {
  H5Id space(H5Dget_space(dset), H5Sclose);
  if (!space.valid()) throw UsageError(path + ": cannot read the shape of " + name);
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank != 1)
    throw UsageError(path + ": " + name + " has rank " + std::to_string(rank) +
                     ", expected a 1-D array");
  hsize_t dims[1] = {0};
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  return dims[0];
}

int64_t read_int_attribute(const std::string& path, hid_t obj, const char* name) {
  H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) throw UsageError(path + ": cannot open attribute " + name);
  H5Id type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw UsageError(path + ": attribute " + name + " is " + type_name(type.get()) +
                     ", expected an integer");
  H5Id space(H5Aget_space(attr.get()), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    throw UsageError(path + ": attribute " + name + " must be a single integer");
  int64_t v = 0;
  if (H5Aread(attr.get(), H5T_NATIVE_INT64, &v) < 0)
    throw UsageError(path + ": cannot read attribute " + name);
  return v;
}

std::string read_string_attribute(const std::string& path, hid_t obj, const char* name) {
  H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) throw UsageError(path + ": cannot open attribute " + name);
  H5Id type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING)
    throw UsageError(path + ": attribute " + name + " is " + type_name(type.get()) +
                     ", expected a string");
  H5Id space(H5Aget_space(attr.get()), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    throw UsageError(path + ": attribute " + name + " must be a single string");
  H5Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
  std::string out;
  if (H5Tis_variable_str(type.get()) > 0) {
    H5Tset_size(mem.get(), H5T_VARIABLE);
    char* s = nullptr;
    if (H5Aread(attr.get(), mem.get(), &s) < 0)
      throw UsageError(path + ": cannot read attribute " + name);
    if (s) {
      out = s;
      H5free_memory(s);
    }
  } else {
    size_t size = H5Tget_size(type.get());
    H5Tset_size(mem.get(), size);
    H5Tset_strpad(mem.get(), H5T_STR_NULLPAD);  // all `size` bytes, no terminator slot
    std::vector<char> buf(size + 1, '\0');
    if (H5Aread(attr.get(), mem.get(), buf.data()) < 0)
      throw UsageError(path + ": cannot read attribute " + name);
    out.assign(buf.data(), strnlen(buf.data(), size));
    while (!out.empty() && out.back() == ' ') out.pop_back();  // space-padded strings
  }
  return out;
}

TokenData read_h5(const std::string& path) {
  silence_hdf5_errors();
  {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
      throw IoError(path + ": is a directory, expected a token file");
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) {
      int err = errno;
      if (err == ENOENT) throw IoError(path + ": no such file");
      throw IoError(path + ": cannot open: " + std::strerror(err));
    }
    std::fclose(f);
  }
  if (H5Fis_hdf5(path.c_str()) <= 0)
    throw UsageError(path + ": not an HDF5 file; " + kPrepareHint);
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.valid()) throw IoError(path + ": cannot open as HDF5 (corrupt or locked?)");

  if (H5Lexists(file.get(), "tokens", H5P_DEFAULT) <= 0)
    throw UsageError(path + ": no dataset /tokens (a token file holds /tokens as uint16 or "
                            "uint32, attributes vocab_size and tokenizer); " +
                     kPrepareHint);
  H5Id dset(H5Dopen2(file.get(), "tokens", H5P_DEFAULT), H5Dclose);
  if (!dset.valid()) throw UsageError(path + ": /tokens is not a dataset; " + kPrepareHint);
  {
    H5Id type(H5Dget_type(dset.get()), H5Tclose);
    bool ok = H5Tget_class(type.get()) == H5T_INTEGER &&
              H5Tget_sign(type.get()) == H5T_SGN_NONE &&
              (H5Tget_size(type.get()) == 2 || H5Tget_size(type.get()) == 4);
    if (!ok)
      throw UsageError(path + ": /tokens has dtype " + type_name(type.get()) +
                       ", expected uint16 or uint32 (e.g. numpy .astype(np.uint16))");
  }
  TokenData d;
  const hsize_t n = dataset_length_1d(path, "/tokens", dset.get());
  d.tokens.resize(n);
  if (n > 0 && H5Dread(dset.get(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                       d.tokens.data()) < 0)
    throw IoError(path + ": failed to read /tokens");

  if (H5Aexists(dset.get(), "vocab_size") > 0) {
    d.vocab_size = read_int_attribute(path, dset.get(), "vocab_size");
  } else if (H5Aexists(file.get(), "vocab_size") > 0) {
    d.vocab_size = read_int_attribute(path, file.get(), "vocab_size");
  } else {
    throw UsageError(path + ": missing integer attribute vocab_size (on the file root or "
                            "/tokens); add it, e.g. f.attrs['vocab_size'] = 256");
  }
  if (H5Aexists(dset.get(), "tokenizer") > 0) {
    d.tokenizer = read_string_attribute(path, dset.get(), "tokenizer");
  } else if (H5Aexists(file.get(), "tokenizer") > 0) {
    d.tokenizer = read_string_attribute(path, file.get(), "tokenizer");
  } else {
    d.tokenizer = "unknown";
    d.tokenizer_recorded = false;
  }

  if (H5Lexists(file.get(), "doc_offsets", H5P_DEFAULT) > 0) {
    H5Id off(H5Dopen2(file.get(), "doc_offsets", H5P_DEFAULT), H5Dclose);
    if (!off.valid()) throw UsageError(path + ": /doc_offsets is not a dataset");
    H5Id type(H5Dget_type(off.get()), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_INTEGER)
      throw UsageError(path + ": /doc_offsets has dtype " + type_name(type.get()) +
                       ", expected uint64");
    const hsize_t m = dataset_length_1d(path, "/doc_offsets", off.get());
    d.doc_offsets.resize(m);
    if (m > 0 && H5Dread(off.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                         d.doc_offsets.data()) < 0)
      throw UsageError(path + ": cannot read /doc_offsets as uint64");
    check_doc_offsets(path, d);
  }
  return d;
}

}  // namespace

TokenData read_token_file(const std::string& path, const Tokenizer* tok) {
  const std::string ext = lower_extension(path);
  TokenData d;
  if (ext == ".txt") {
    d = read_txt(path, tok);
  } else if (ext == ".bin") {
    d = read_bin(path);
  } else if (ext == ".h5") {
    d = read_h5(path);
  } else {
    throw UsageError(path + ": unknown token file extension '" + ext + "' (" + kSupported + ")");
  }
  check_tokens_in_vocab(path, d);
  return d;
}

// ---- writers -----------------------------------------------------------------

void write_token_file_h5(const std::string& path, const TokenData& data) {
  check_tokens_in_vocab(path, data);
  check_doc_offsets(path, data);
  silence_hdf5_errors();
  H5Id file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  if (!file.valid()) throw IoError(path + ": cannot create HDF5 file");
  auto fail = [&](const char* what) { throw IoError(path + ": failed to write " + what); };

  const bool u16 = data.vocab_size <= 65536;
  hsize_t n = data.tokens.size();
  {
    H5Id space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    H5Id dset(H5Dcreate2(file.get(), "tokens", u16 ? H5T_STD_U16LE : H5T_STD_U32LE, space.get(),
                         H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
    if (!dset.valid()) fail("/tokens");
    if (n > 0 && H5Dwrite(dset.get(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                          data.tokens.data()) < 0)
      fail("/tokens");
  }
  if (!data.doc_offsets.empty()) {
    hsize_t m = data.doc_offsets.size();
    H5Id space(H5Screate_simple(1, &m, nullptr), H5Sclose);
    H5Id dset(H5Dcreate2(file.get(), "doc_offsets", H5T_STD_U64LE, space.get(), H5P_DEFAULT,
                         H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
    if (!dset.valid() || H5Dwrite(dset.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                               data.doc_offsets.data()) < 0)
      fail("/doc_offsets");
  }
  // Attributes on the file root (h5py: f.attrs[...]).
  {
    H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
    H5Id attr(H5Acreate2(file.get(), "vocab_size", H5T_STD_I64LE, space.get(), H5P_DEFAULT,
                         H5P_DEFAULT),
              H5Aclose);
    int64_t v = data.vocab_size;
    if (!attr.valid() || H5Awrite(attr.get(), H5T_NATIVE_INT64, &v) < 0) fail("attribute vocab_size");
  }
  {
    H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.get(), H5T_VARIABLE);
    H5Tset_cset(type.get(), H5T_CSET_UTF8);
    H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
    H5Id attr(H5Acreate2(file.get(), "tokenizer", type.get(), space.get(), H5P_DEFAULT,
                         H5P_DEFAULT),
              H5Aclose);
    const char* s = data.tokenizer.c_str();
    if (!attr.valid() || H5Awrite(attr.get(), type.get(), &s) < 0) fail("attribute tokenizer");
  }
  if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) fail("(flush)");
}

void write_token_file_bin(const std::string& path, const TokenData& data) {
  if (data.vocab_size > 65536)
    throw UsageError(path + ": vocab_size " + std::to_string(data.vocab_size) +
                     " does not fit llm.c .bin version 1 (uint16 tokens, vocab <= 65536); "
                     "write .h5 instead");
  if (data.tokens.size() > size_t(INT32_MAX))
    throw UsageError(path + ": " + std::to_string(data.tokens.size()) +
                     " tokens exceed the llm.c header's int32 count; write .h5 instead");
  check_tokens_in_vocab(path, data);
  int32_t header[kLlmcHeaderInts] = {};
  header[0] = kLlmcMagic;
  header[1] = kLlmcVersion;
  header[2] = int32_t(data.tokens.size());
  std::vector<uint16_t> toks(data.tokens.begin(), data.tokens.end());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw IoError(path + ": cannot create: " + std::strerror(errno));
  write_file_bytes(path, header, sizeof header, f);
  write_file_bytes(path, toks.data(), toks.size() * sizeof(uint16_t), f);
  if (std::fclose(f) != 0) throw IoError(path + ": write failed: " + std::strerror(errno));
}

std::vector<uint32_t> tokenize_bytes(const std::string& text) {
  std::vector<uint32_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

std::string detokenize_bytes(const uint32_t* tokens, size_t n) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>(tokens[i] & 0xFF);
  return out;
}

std::string val_output_path(const std::string& out) {
  const size_t dot = out.find_last_of('.');
  const size_t slash = out.find_last_of('/');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return out + ".val";
  return out.substr(0, dot) + ".val" + out.substr(dot);
}

std::vector<std::string> prepare_token_file(const std::vector<std::string>& inputs,
                                            const std::string& out, const std::string& tokenizer,
                                            double val_fraction) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0))
    throw UsageError("--val-fraction must be in [0, 1) (e.g. 0.1: the last tenth of the text "
                     "for validation), got " + std::to_string(val_fraction));
  const std::string ext = lower_extension(out);
  if (ext != ".h5" && ext != ".bin")
    throw UsageError(out + ": output must end in .h5 or .bin (got '" + ext + "')");
  if (inputs.empty()) throw UsageError("data prepare: no input files given");
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer);
  TokenData d;
  d.vocab_size = tok->vocab_size();
  d.tokenizer = tok->id();
  for (const std::string& in : inputs) {
    d.doc_offsets.push_back(d.tokens.size());
    const std::vector<uint32_t> ids = tok->encode(read_file_bytes(in));
    d.tokens.insert(d.tokens.end(), ids.begin(), ids.end());
  }
  auto write = [&](const std::string& path, const TokenData& t) {
    if (ext == ".h5")
      write_token_file_h5(path, t);
    else
      write_token_file_bin(path, t);
  };
  if (val_fraction == 0.0) {
    write(out, d);
    return {out};
  }
  const size_t n = d.tokens.size();
  const size_t n_val = size_t(double(n) * val_fraction + 0.5);
  if (n_val == 0 || n_val >= n)
    throw UsageError("--val-fraction " + std::to_string(val_fraction) + " of " +
                     std::to_string(n) + " tokens leaves an empty " +
                     (n_val == 0 ? "validation" : "training") + " part");
  const size_t n_train = n - n_val;
  TokenData train, val;
  train.vocab_size = val.vocab_size = d.vocab_size;
  train.tokenizer = val.tokenizer = d.tokenizer;
  train.tokens.assign(d.tokens.begin(), d.tokens.begin() + std::ptrdiff_t(n_train));
  val.tokens.assign(d.tokens.begin() + std::ptrdiff_t(n_train), d.tokens.end());
  val.doc_offsets.push_back(0);  // the validation part starts inside (or at) a document
  for (uint64_t off : d.doc_offsets) {
    if (off < n_train)
      train.doc_offsets.push_back(off);
    else if (off > n_train)
      val.doc_offsets.push_back(off - n_train);
  }
  const std::string val_path = val_output_path(out);
  write(out, train);
  write(val_path, val);
  return {out, val_path};
}

}  // namespace rt
