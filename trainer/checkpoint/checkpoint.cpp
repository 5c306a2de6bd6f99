#include "trainer/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <regex>
#include <system_error>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "common/hdf5.h"
#include "common/strings.h"
#include "common/log.h"
#include "trainer/hf/hf_io.h"
#include "trainer/checkpoint/integrity.h"

namespace rt {
namespace {

namespace fs = std::filesystem;

// ---- HDF5 plumbing (H5Id, silence_hdf5_errors: common/hdf5.h) -------------

// HDF5 closes what is still open from an atexit handler. After a save that
// failed half-way (a full disk), the half-closed file makes that handler
// crash (exit 139 instead of our 3). Every file we write is closed
// explicitly, and read-only files need no cleanup, so skip it. Must run
// before the library's first initialisation: a static initialiser.
const bool kHdf5NoAtexit = [] {
  H5dont_atexit();
  return true;
}();

herr_t collect_error(unsigned /*n*/, const H5E_error2_t* e, void* data) {
  if (e->desc && e->desc[0]) static_cast<std::vector<std::string>*>(data)->push_back(e->desc);
  return 0;
}

// The reason for the HDF5 call that just failed: the OS error text when the
// stack carries one ("No space left on device"), else the most specific
// description. Must be called right after the failing call.
std::string h5_reason() {
  std::vector<std::string> descs;  // most specific first
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &descs);
  static const std::string kMarker = "error message = '";
  for (const std::string& d : descs) {
    size_t at = d.find(kMarker);
    if (at == std::string::npos) continue;
    at += kMarker.size();
    size_t end = d.find('\'', at);
    return d.substr(at, end == std::string::npos ? std::string::npos : end - at);
  }
  if (descs.empty()) return "unknown HDF5 error";
  std::string r = descs.front();
  if (r.size() > 200) r = r.substr(0, 200) + "...";
  return r;
}

// ---- writing ---------------------------------------------------------------

// Writes one checkpoint file; every failure throws IoError(prefix + what).
class CheckpointWriter {
 public:
  CheckpointWriter(const std::string& path, const std::string& display_path)
      : display_(display_path) {
    (void)kHdf5NoAtexit;
    // The HDF5 1.10 file format: checksummed superblock, object headers
    // (attributes, links) and chunk indexes (fixed arrays), on top of the
    // Fletcher32 of the chunks. Readable by HDF5 >= 1.10 (h5py >= 2.7).
    H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    if (!fapl.valid() || H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110) < 0)
      fail("cannot set the file format version");
    hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
    if (f < 0) fail("cannot create temporary file " + path);
    file_ = H5Id(f, H5Fclose);
  }

  hid_t file() const { return file_.get(); }

  H5Id group(hid_t parent, const char* name) {
    hid_t g = H5Gcreate2(parent, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) fail(std::string("cannot create group ") + name);
    return H5Id(g, H5Gclose);
  }

  // A variable-length UTF-8 string (stored in the global heap).
  void string_attr(hid_t obj, const char* name, const std::string& value) {
    H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
    if (!type.valid() || H5Tset_size(type.get(), H5T_VARIABLE) < 0 ||
        H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0)
      fail("cannot make a string type");
    const char* p = value.c_str();
    scalar_attr(obj, name, type.get(), &p);
  }

  // A fixed-length UTF-8 string: stored inside the (checksummed) object
  // header, never in the global heap.
  void fixed_string_attr(hid_t obj, const char* name, const std::string& value) {
    std::string buf = value;
    buf.resize(std::max<size_t>(1, value.size()), '\0');
    H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
    if (!type.valid() || H5Tset_size(type.get(), buf.size()) < 0 ||
        H5Tset_strpad(type.get(), H5T_STR_NULLPAD) < 0 ||
        H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0)
      fail("cannot make a string type");
    scalar_attr(obj, name, type.get(), buf.data());
  }

  // file_type: H5T_STD_I64LE or H5T_STD_I32LE
  void int_attr(hid_t obj, const char* name, int64_t value, hid_t file_type) {
    scalar_attr(obj, name, file_type, &value, H5T_NATIVE_INT64);
  }

  // One scalar attribute `name` of `file_type` on `obj`, written from `data`
  // (in memory as `mem_type`, by default the file type).
  void scalar_attr(hid_t obj, const char* name, hid_t file_type, const void* data,
                   hid_t mem_type = H5I_INVALID_HID) {
    H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
    H5Id attr(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!attr.valid()) fail(std::string("cannot create attribute ") + name);
    if (H5Awrite(attr.get(), mem_type == H5I_INVALID_HID ? file_type : mem_type, data) < 0)
      fail(std::string("cannot write attribute ") + name);
  }

  // Every tensor of `arena` as a float32 dataset under `group` (full path
  // `group_path` for messages), chunked with Fletcher32.
  void tensors(hid_t group, const std::string& group_path, Backend& be, const Arena& arena,
               IntegrityRecord& record) {
    std::vector<float> host;
    for (const TensorSpec& s : arena.specs()) {
      host.resize(s.numel);
      if (s.numel) be.copy_to_host(host.data(), arena.f32(s), s.numel * sizeof(float));
      record.datasets[group_path + "/" + s.name] = {
          s.shape, digest_hex(host.data(), host.size() * sizeof(float))};
      tensor(group, group_path, s.name, s.shape, host.data());
    }
  }

  // One float32 dataset `name` (host data, numel of shape) under `group`.
  void tensor(hid_t group, const std::string& group_path, const std::string& name,
              const std::vector<int64_t>& shape, const float* host) {
    const std::string where = group_path + "/" + name;
    hsize_t numel = 1;
    for (int64_t d : shape) numel *= hsize_t(d);
    std::vector<hsize_t> dims(shape.begin(), shape.end());
    H5Id space(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
    H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    if (!space.valid() || !dcpl.valid()) fail("cannot describe dataset " + where);
    if (numel > 0) {
      std::vector<hsize_t> chunk = chunk_dims(dims);
      if (H5Pset_chunk(dcpl.get(), int(chunk.size()), chunk.data()) < 0 ||
          H5Pset_fletcher32(dcpl.get()) < 0)
        fail("cannot set chunking/Fletcher32 for dataset " + where);
    }
    H5Id dset(H5Dcreate2(group, name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                         dcpl.get(), H5P_DEFAULT),
              H5Dclose);
    if (!dset.valid()) fail("cannot create dataset " + where);
    if (numel > 0 &&
        H5Dwrite(dset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, host) < 0)
      fail("cannot write dataset " + where);
    if (dset.close() < 0) fail("cannot write dataset " + where);
  }

  // A byte string as a 1-D uint8 dataset `name` under `group`.
  void bytes(hid_t group, const std::string& group_path, const std::string& name,
             const std::string& data) {
    const std::string where = group_path + "/" + name;
    hsize_t dims[1] = {hsize_t(data.size())};
    H5Id space(H5Screate_simple(1, dims, nullptr), H5Sclose);
    H5Id dset(H5Dcreate2(group, name.c_str(), H5T_STD_U8LE, space.get(), H5P_DEFAULT,
                         H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
    if (!dset.valid()) fail("cannot create dataset " + where);
    if (!data.empty() &&
        H5Dwrite(dset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()) < 0)
      fail("cannot write dataset " + where);
    if (dset.close() < 0) fail("cannot write dataset " + where);
  }

  // Flush and close; errors that surface only now (full disk) are caught.
  void finish() {
    if (H5Fflush(file_.get(), H5F_SCOPE_GLOBAL) < 0) fail("cannot flush file");
    if (file_.close() < 0) fail("cannot close file");
  }

  [[noreturn]] void fail(const std::string& what) {
    throw IoError("checkpoint " + display_ + ": " + what + ": " + h5_reason());
  }

 private:
  // The whole tensor, cut along the leading dims to at most 1M elements
  // (4 MiB) per chunk.
  static std::vector<hsize_t> chunk_dims(const std::vector<hsize_t>& dims) {
    constexpr hsize_t kMaxChunk = hsize_t(1) << 20;
    std::vector<hsize_t> chunk = dims;
    if (chunk.empty()) return {1};  // scalar: not chunkable; caller never passes one
    for (size_t i = 0; i < chunk.size(); ++i) {
      hsize_t inner = 1;
      for (size_t j = i + 1; j < chunk.size(); ++j) inner *= chunk[j];
      if (chunk[i] * inner <= kMaxChunk) break;
      chunk[i] = std::max<hsize_t>(1, kMaxChunk / inner);
    }
    return chunk;
  }

  std::string display_;
  H5Id file_;
};

// fsync a path opened with flags (a file, or a directory with O_DIRECTORY).
int fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) return errno;
  int err = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

// RINGTRAIN_TEST_DIE_BEFORE_RENAME=N: the N-th save of this process dies
// here, as a kill -9 would (no destructors, no cleanup of the .tmp file).
void die_before_rename_if_testing(const std::string& tmp) {
  static int saves = 0;
  ++saves;
  const char* v = std::getenv("RINGTRAIN_TEST_DIE_BEFORE_RENAME");
  if (!v || std::atoi(v) != saves) return;
  std::fprintf(stderr, "RINGTRAIN_TEST_DIE_BEFORE_RENAME=%s: dying before renaming %s\n", v,
               tmp.c_str());
  std::fflush(stderr);
  ::_exit(137);
}

// ---- reading ---------------------------------------------------------------

// An opened checkpoint: checks the file exists and is HDF5, and turns every
// failure into an error naming the file.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path) : path_(path) {
    silence_hdf5_errors();
    std::error_code ec;
    if (!fs::exists(path, ec)) throw IoError("checkpoint " + path + ": no such file");
    if (fs::is_directory(path, ec))
      throw IoError("checkpoint " + path + ": is a directory, expected an .h5 file");
    htri_t is_h5 = H5Fis_hdf5(path.c_str());
    if (is_h5 == 0)
      throw IoError("checkpoint " + path + ": not an HDF5 file (wrong signature)");
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
      throw IoError("checkpoint " + path + ": cannot open (" + h5_reason() +
                    "); the file is truncated, corrupt or unreadable");
    file_ = H5Id(f, H5Fclose);
    load_integrity_record();
  }

  const std::string& path() const { return path_; }
  // The integrity record; none in files written by other tools or before it existed.
  const std::optional<IntegrityRecord>& record() const { return record_; }

  // IoError: the file fails an integrity or consistency check.
  [[noreturn]] void bad(const std::string& what) const {
    throw IoError("checkpoint " + path_ + ": integrity check failed: " + what +
                  "; the file is corrupt (use an earlier checkpoint)");
  }
  hid_t file() const { return file_.get(); }

  bool exists(hid_t parent, const std::string& name) const {
    return H5Lexists(parent, name.c_str(), H5P_DEFAULT) > 0;
  }

  // A group; IoError(missing_msg) when absent.
  H5Id group(hid_t parent, const std::string& name, const std::string& missing_msg) const {
    if (!exists(parent, name)) throw IoError("checkpoint " + path_ + ": " + missing_msg);
    hid_t g = H5Gopen2(parent, name.c_str(), H5P_DEFAULT);
    if (g < 0) fail("cannot open group " + name);
    return H5Id(g, H5Gclose);
  }

  bool has_attr(hid_t obj, const char* name) const { return H5Aexists(obj, name) > 0; }

  // Variable-length strings live in HDF5's global heap, which has no
  // checksum: a damaged heap object makes HDF5 overrun a buffer or loop.
  // Call this on them only inside read_strings_isolated().
  std::string string_attr(hid_t obj, const char* name, bool fixed_only = false) const {
    H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    if (!attr.valid()) fail(std::string("cannot open attribute '") + name + "'");
    H5Id type(H5Aget_type(attr.get()), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_STRING)
      throw IoError("checkpoint " + path_ + ": attribute '" + name + "' is not a string");
    check_single(attr.get(), name);
    std::string out;
    if (H5Tis_variable_str(type.get()) != 0) {
      if (fixed_only)
        throw IoError("checkpoint " + path_ + ": attribute '" + name +
                      "' must be a fixed-length string; the file is corrupt");
      H5Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
      H5Tset_size(mem.get(), H5T_VARIABLE);
      H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
      char* p = nullptr;
      if (H5Aread(attr.get(), mem.get(), &p) < 0)
        fail(std::string("cannot read attribute '") + name + "'");
      if (p) out = p;
      H5free_memory(p);
    } else {
      size_t n = H5Tget_size(type.get());
      if (n == 0 || n > (size_t(1) << 30))
        throw IoError("checkpoint " + path_ + ": attribute '" + name + "' has an implausible "
                      "string length " + std::to_string(n) + "; the file is corrupt");
      H5Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
      H5Tset_size(mem.get(), n + 1);  // room for a terminator after NULLPAD strings
      H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
      std::vector<char> buf(n + 1, '\0');
      if (H5Aread(attr.get(), mem.get(), buf.data()) < 0)
        fail(std::string("cannot read attribute '") + name + "'");
      out.assign(buf.data(), strnlen(buf.data(), n));
    }
    return out;
  }

  int64_t int_attr(hid_t obj, const char* name) const {
    H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    if (!attr.valid()) fail(std::string("cannot open attribute '") + name + "'");
    H5Id type(H5Aget_type(attr.get()), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_INTEGER)
      throw IoError("checkpoint " + path_ + ": attribute '" + name + "' is not an integer");
    check_single(attr.get(), name);
    int64_t v = 0;
    if (H5Aread(attr.get(), H5T_NATIVE_INT64, &v) < 0)
      fail(std::string("cannot read attribute '") + name + "'");
    return v;
  }

  // The shape of a dataset (IoError if it is not a float dataset).
  std::vector<int64_t> dataset_shape(hid_t group, const std::string& name,
                                     const std::string& where) const {
    H5Id dset(H5Dopen2(group, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!dset.valid()) fail("cannot open dataset " + where);
    H5Id type(H5Dget_type(dset.get()), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_FLOAT)
      throw UsageError("checkpoint " + path_ + ": dataset " + where +
                       " is not floating point (expected float32)");
    H5Id space(H5Dget_space(dset.get()), H5Sclose);
    int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 0) fail("cannot read the shape of dataset " + where);
    std::vector<hsize_t> dims(size_t(rank), 0);
    H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    return std::vector<int64_t>(dims.begin(), dims.end());
  }

  // Reads a float dataset (any float width, converted) into host memory.
  void read_floats(hid_t group, const std::string& name, const std::string& where,
                   std::vector<float>& out) const {
    H5Id dset(H5Dopen2(group, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!dset.valid()) fail("cannot open dataset " + where);
    const IntegrityDataset* recorded = nullptr;
    if (record_) {
      auto it = record_->datasets.find(where);
      if (it == record_->datasets.end()) bad("dataset " + where + " is not in the integrity record");
      recorded = &it->second;
    }
    if (out.empty()) {
      if (recorded && recorded->digest != digest_hex(nullptr, 0))
        bad("dataset " + where + " is empty but the integrity record says otherwise");
      return;
    }
    // Every chunk must exist: a damaged chunk index makes HDF5 return the
    // fill value (zeros) for the chunks it cannot find, without an error.
    check_allocated(dset.get(), where);
    if (recorded) {
      // ringtrain writes float32 without compression: at least 4 bytes per element.
      const hsize_t bytes = H5Dget_storage_size(dset.get());
      if (bytes < hsize_t(out.size()) * sizeof(float))
        bad("dataset " + where + " has " + std::to_string(bytes) + " bytes of storage, " +
            std::to_string(out.size() * sizeof(float)) + " expected");
    }
    if (H5Dread(dset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
      throw IoError("checkpoint " + path_ + ": checksum mismatch or unreadable data in dataset " +
                    where + " (" + h5_reason() +
                    "): the file is corrupt; use an earlier checkpoint");
    if (recorded) {
      const std::string got = digest_hex(out.data(), out.size() * sizeof(float));
      if (got != recorded->digest)
        bad("dataset " + where + " reads back with digest " + got +
            ", the integrity record says " + recorded->digest);
    }
  }

  // Chunked: every chunk is in the index; contiguous or compact: allocated.
  void check_allocated(hid_t dset, const std::string& where) const {
    H5Id dcpl(H5Dget_create_plist(dset), H5Pclose);
    if (!dcpl.valid()) fail("cannot read the storage layout of dataset " + where);
    const H5D_layout_t layout = H5Pget_layout(dcpl.get());
    if (layout == H5D_CHUNKED) {
      H5Id space(H5Dget_space(dset), H5Sclose);
      const int rank = H5Sget_simple_extent_ndims(space.get());
      if (rank < 0 || rank > 32) fail("cannot read the shape of dataset " + where);
      std::vector<hsize_t> dims(static_cast<size_t>(rank)), chunk(static_cast<size_t>(rank));
      H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
      if (H5Pget_chunk(dcpl.get(), rank, chunk.data()) != rank)
        fail("cannot read the chunk shape of dataset " + where);
      hsize_t expected = 1;
      for (int i = 0; i < rank; ++i) {
        if (chunk[size_t(i)] == 0) bad("dataset " + where + " has a zero chunk dimension");
        expected *= (dims[size_t(i)] + chunk[size_t(i)] - 1) / chunk[size_t(i)];
      }
      hsize_t n = 0;
      if (H5Dget_num_chunks(dset, space.get(), &n) < 0)
        fail("cannot count the chunks of dataset " + where);
      if (n != expected)
        bad("dataset " + where + " has " + std::to_string(n) + " of its " +
            std::to_string(expected) + " chunks in its chunk index (a damaged index, or never "
            "written)");
      return;
    }
    H5D_space_status_t status;
    if (H5Dget_space_status(dset, &status) < 0)
      fail("cannot read the storage status of dataset " + where);
    if (status != H5D_SPACE_STATUS_ALLOCATED)
      bad("dataset " + where + " has no storage allocated (never written)");
  }

  // Names of the links in a group, sorted.
  std::vector<std::string> link_names(hid_t group) const {
    H5G_info_t info;
    if (H5Gget_info(group, &info) < 0) fail("cannot list a group");
    std::vector<std::string> names;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      ssize_t n = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0,
                                     H5P_DEFAULT);
      if (n < 0) fail("cannot list a group");
      std::string s(size_t(n) + 1, '\0');
      H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), s.size(),
                         H5P_DEFAULT);
      s.resize(size_t(n));
      names.push_back(s);
    }
    return names;
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw IoError("checkpoint " + path_ + ": " + what + " (" + h5_reason() +
                  "); the file may be corrupt");
  }

 private:
  void check_single(hid_t attr, const char* name) const {
    H5Id space(H5Aget_space(attr), H5Sclose);
    if (H5Sget_simple_extent_npoints(space.get()) != 1)
      throw IoError("checkpoint " + path_ + ": attribute '" + name +
                    "' must be a single value");
  }

  void load_integrity_record() {
    if (!has_attr(file(), "integrity")) return;
    const std::string text = string_attr(file(), "integrity", true);
    if (!has_attr(file(), "integrity_digest")) bad("attribute 'integrity_digest' is missing");
    const std::string digest = string_attr(file(), "integrity_digest", true);
    if (digest_hex(text.data(), text.size()) != digest)
      bad("the integrity record does not match its digest");
    try {
      record_ = IntegrityRecord::from_json(text);
    } catch (const std::runtime_error& e) {
      bad(std::string("the integrity record is ") + e.what());
    }
  }

  std::string path_;
  H5Id file_;
  std::optional<IntegrityRecord> record_;
};

// The string attributes of SPEC §8.
struct CheckpointStrings {
  std::optional<std::string> format, config, optimizer_type, trainer_state;
};

// Reads the string attributes of a file without an integrity record (written
// by h5py or an older ringtrain; variable-length strings in the unchecked
// global heap) in a child process, so that a corrupt heap that crashes or
// hangs HDF5 becomes an IoError here. Falls back to reading in-process when
// fork() fails.
CheckpointStrings read_strings_isolated(const CheckpointReader& r) {
  auto read_all = [&r](CheckpointStrings& out) {
    if (r.has_attr(r.file(), "format")) out.format = r.string_attr(r.file(), "format");
    if (r.has_attr(r.file(), "config")) out.config = r.string_attr(r.file(), "config");
    if (r.exists(r.file(), "optimizer")) {
      H5Id g = r.group(r.file(), "optimizer", "no /optimizer group");
      if (r.has_attr(g.get(), "type")) out.optimizer_type = r.string_attr(g.get(), "type");
    }
    if (r.exists(r.file(), "trainer")) {
      H5Id g = r.group(r.file(), "trainer", "no /trainer group");
      if (r.has_attr(g.get(), "state")) out.trainer_state = r.string_attr(g.get(), "state");
    }
  };
  CheckpointStrings out;
  int fds[2];
  if (::pipe(fds) != 0) {
    read_all(out);
    return out;
  }
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    read_all(out);
    return out;
  }
  if (pid == 0) {  // child: read, send, _exit (no destructors, no atexit handlers)
    ::close(fds[0]);
    ::alarm(30);
    std::string msg;
    try {
      CheckpointStrings got;
      read_all(got);
      msg = "K";
      for (const auto* v : {&got.format, &got.config, &got.optimizer_type, &got.trainer_state}) {
        const uint64_t n = *v ? (*v)->size() : ~uint64_t(0);
        msg.append(reinterpret_cast<const char*>(&n), sizeof n);
        if (*v) msg += **v;
      }
    } catch (const std::exception& e) {
      msg = std::string("E") + e.what();
    }
    for (size_t at = 0; at < msg.size();) {
      ssize_t n = ::write(fds[1], msg.data() + at, msg.size() - at);
      if (n <= 0) break;
      at += size_t(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string msg;
  bool timed_out = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    int pr = ::poll(&p, 1, int(left));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    char buf[65536];
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    msg.append(buf, size_t(n));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const std::string where = "checkpoint " + r.path() + ": ";
  if (timed_out || WIFSIGNALED(status))
    throw IoError(where + "reading its string attributes " +
                  (timed_out ? std::string("hung") : std::string("crashed")) +
                  " inside HDF5 (a corrupt variable-length string); the file is corrupt (use an "
                  "earlier checkpoint)");
  if (msg.empty()) throw IoError(where + "cannot read its string attributes");
  if (msg[0] == 'E') throw IoError(msg.substr(1));
  size_t at = 1;
  for (auto* v : {&out.format, &out.config, &out.optimizer_type, &out.trainer_state}) {
    uint64_t n = 0;
    if (at + sizeof n > msg.size()) throw IoError(where + "cannot read its string attributes");
    std::memcpy(&n, msg.data() + at, sizeof n);
    at += sizeof n;
    if (n == ~uint64_t(0)) continue;
    if (n > msg.size() - at) throw IoError(where + "cannot read its string attributes");
    *v = msg.substr(at, size_t(n));
    at += size_t(n);
  }
  return out;
}

// The string attributes: from the integrity record when there is one (the
// variable-length copies are then never read), else read isolated.
CheckpointStrings read_strings(const CheckpointReader& r) {
  if (!r.record()) return read_strings_isolated(r);
  const IntegrityRecord& rec = *r.record();
  CheckpointStrings out;
  if (r.has_attr(r.file(), "format")) out.format = rec.format;
  if (r.has_attr(r.file(), "config")) out.config = rec.config;
  if (rec.optimizer_step) out.optimizer_type = rec.optimizer_type;
  out.trainer_state = rec.trainer_state;
  return out;
}

void check_format(const CheckpointReader& r, const CheckpointStrings& str) {
  const std::string& p = r.path();
  if (!str.format)
    throw IoError("checkpoint " + p + ": not a ringtrain checkpoint (missing attribute 'format')");
  const std::string& format = *str.format;
  if (format != "ringtrain")
    throw IoError("checkpoint " + p + ": not a ringtrain checkpoint (attribute 'format' is '" +
                  format + "', expected 'ringtrain')");
  if (!r.has_attr(r.file(), "format_version"))
    throw IoError("checkpoint " + p +
                  ": not a ringtrain checkpoint (missing attribute 'format_version')");
  int64_t version = r.int_attr(r.file(), "format_version");
  if (r.record() && r.record()->format_version != version)
    r.bad("attribute 'format_version' is " + std::to_string(version) +
          " but the integrity record says " + std::to_string(r.record()->format_version));
  if (version != kCheckpointFormatVersion)
    throw IoError("checkpoint " + p + ": format_version " + std::to_string(version) +
                  " is not supported (this build reads version " +
                  std::to_string(kCheckpointFormatVersion) + ")");
}

// The root and group attributes, checked against the integrity record and
// against each other: the step in the file name (step_N.h5), the root `step`,
// /optimizer's `step` and the /trainer state's `step` must agree.
CheckpointMeta read_meta(const CheckpointReader& r, CheckpointStrings* strings_out = nullptr,
                         int64_t* optimizer_step_out = nullptr) {
  const std::string& path = r.path();
  const CheckpointStrings str = read_strings(r);
  check_format(r, str);
  const std::optional<IntegrityRecord>& rec = r.record();
  CheckpointMeta meta;
  meta.format_version = kCheckpointFormatVersion;
  auto root_int = [&](const char* name, int64_t IntegrityRecord::*field) -> int64_t {
    const bool has = r.has_attr(r.file(), name);
    if (rec && !has) r.bad(std::string("root attribute '") + name + "' is missing");
    const int64_t v = has ? r.int_attr(r.file(), name) : 0;
    if (rec && v != (*rec).*field)
      r.bad(std::string("root attribute '") + name + "' is " + std::to_string(v) +
            " but the integrity record says " + std::to_string((*rec).*field));
    if (v < 0) r.bad(std::string("root attribute '") + name + "' is negative");
    return v;
  };
  meta.step = root_int("step", &IntegrityRecord::step);
  meta.tokens_seen = root_int("tokens_seen", &IntegrityRecord::tokens_seen);
  if (!str.config)
    throw IoError("checkpoint " + path +
                  ": not a ringtrain checkpoint (missing attribute 'config')");
  meta.config_yaml = *str.config;
  meta.has_optimizer = r.exists(r.file(), "optimizer");
  int64_t opt_step = 0;
  if (rec && meta.has_optimizer != rec->optimizer_step.has_value())
    r.bad(meta.has_optimizer ? "the file has an /optimizer group the integrity record does not list"
                             : "the /optimizer group is missing");
  if (meta.has_optimizer) {
    H5Id g = r.group(r.file(), "optimizer", "no /optimizer group");
    if (str.optimizer_type) meta.optimizer_type = *str.optimizer_type;
    if (r.has_attr(g.get(), "step")) {
      opt_step = r.int_attr(g.get(), "step");
      if (rec && opt_step != *rec->optimizer_step)
        r.bad("/optimizer attribute 'step' is " + std::to_string(opt_step) +
              " but the integrity record says " + std::to_string(*rec->optimizer_step));
      // Skipped (non-finite) steps do not count as optimizer steps.
      if (opt_step < 0 || opt_step > meta.step)
        r.bad("/optimizer attribute 'step' is " + std::to_string(opt_step) +
              ", not within [0, root step " + std::to_string(meta.step) + "]");
    } else if (rec) {
      r.bad("/optimizer attribute 'step' is missing");
    }
  }
  if (str.trainer_state) meta.trainer_state_json = *str.trainer_state;
  if (!meta.trainer_state_json.empty()) {
    nlohmann::json st = nlohmann::json::parse(meta.trainer_state_json, nullptr, false);
    if (st.is_discarded() || !st.is_object())
      r.bad("/trainer attribute 'state' is not a JSON object");
    for (const char* key : {"step", "tokens_seen"}) {
      if (!st.contains(key)) continue;
      const int64_t want = std::string(key) == "step" ? meta.step : meta.tokens_seen;
      if (!st[key].is_number_integer() || st[key].get<int64_t>() != want)
        r.bad(std::string("/trainer state says ") + key + " " + st[key].dump() +
              " but the root attribute '" + key + "' is " + std::to_string(want));
    }
  }
  static const std::regex kName(R"(step_(\d{1,18})\.h5)");
  std::smatch m;
  const std::string name = fs::path(path).filename().string();
  if (std::regex_match(name, m, kName) && std::stoll(m[1].str()) != meta.step)
    r.bad("the file name says step " + std::to_string(std::stoll(m[1].str())) +
          " but the root attribute 'step' is " + std::to_string(meta.step));
  // the model's tokenizer (data/tokenizer.h), a fixed-length string
  if (r.has_attr(r.file(), "tokenizer")) meta.tokenizer = r.string_attr(r.file(), "tokenizer", true);
  if (strings_out) *strings_out = str;
  if (optimizer_step_out) *optimizer_step_out = opt_step;
  return meta;
}

// Datasets of a group: with an integrity record, the names and shapes must be
// the recorded ones (an IoError, checked before any comparison with the
// config, which would be a UsageError).
void verify_group_against_record(const CheckpointReader& r, hid_t group,
                                 const std::string& group_path) {
  if (!r.record()) return;
  const auto& recorded = r.record()->datasets;
  const std::string prefix = group_path + "/";
  std::vector<std::string> in_file;
  for (const std::string& name : r.link_names(group)) {
    const std::string where = prefix + name;
    H5O_info_t oinfo;
    if (H5Oget_info_by_name2(group, name.c_str(), &oinfo, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
      r.fail("cannot read object " + where);
    if (oinfo.type != H5O_TYPE_DATASET) continue;
    auto it = recorded.find(where);
    if (it == recorded.end()) r.bad("dataset " + where + " is not in the integrity record");
    const std::vector<int64_t> shape = r.dataset_shape(group, name, where);
    if (shape != it->second.shape)
      r.bad("dataset " + where + " has shape " + shape_str(shape) +
            " but the integrity record says " + shape_str(it->second.shape));
    in_file.push_back(where);
  }
  for (auto it = recorded.lower_bound(prefix); it != recorded.end(); ++it) {
    if (it->first.compare(0, prefix.size(), prefix) != 0) break;
    if (it->first.find('/', prefix.size()) != std::string::npos) continue;  // a subgroup's
    if (std::find(in_file.begin(), in_file.end(), it->first) == in_file.end())
      r.bad("dataset " + it->first + " is in the integrity record but missing from the file");
  }
}

// Loads every tensor of `arena` from `group` (path `group_path`). All shapes
// are checked first, so a mismatch leaves the arena untouched.
void load_tensors(const CheckpointReader& r, hid_t group, const std::string& group_path,
                  Backend& be, Arena& arena, const std::vector<std::string>& optional = {}) {
  auto is_optional = [&](const std::string& name) {
    return std::find(optional.begin(), optional.end(), name) != optional.end();
  };
  verify_group_against_record(r, group, group_path);
  std::vector<std::string> problems;
  for (const TensorSpec& s : arena.specs()) {
    const std::string where = group_path + "/" + s.name;
    if (!r.exists(group, s.name)) {
      if (is_optional(s.name)) continue;
      problems.push_back(where + " is missing, the config expects " + shape_str(s.shape));
      continue;
    }
    std::vector<int64_t> shape = r.dataset_shape(group, s.name, where);
    if (shape != s.shape)
      problems.push_back(s.name + " has shape " + shape_str(shape) + ", the config expects " +
                         shape_str(s.shape));
  }
  std::vector<std::string> extra;
  for (const std::string& name : r.link_names(group))
    if (!arena.has(name) && !is_optional(name)) extra.push_back(name);
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size(); ++i) list += (i ? ", " : "") + extra[i];
    problems.push_back(group_path + " has " + std::to_string(extra.size()) +
                       " dataset(s) the config's model does not have: " + list);
  }
  if (!problems.empty()) {
    std::string msg = "checkpoint " + r.path() + ": ";
    for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw UsageError(msg + " (the model section of the config must match the checkpoint)");
  }
  std::vector<float> host;
  for (const TensorSpec& s : arena.specs()) {
    if (is_optional(s.name) && !r.exists(group, s.name)) continue;
    host.assign(s.numel, 0.f);
    r.read_floats(group, s.name, group_path + "/" + s.name, host);
    if (s.numel) be.copy_to_device(arena.f32(s), host.data(), s.numel * sizeof(float));
  }
}

}  // namespace

// ---- public API ------------------------------------------------------------

void save_checkpoint(const std::string& path, LlamaModel& model, Optimizer* opt,
                     const CheckpointMeta& meta) {
  silence_hdf5_errors();
  const std::string tmp = path + ".tmp";
  const fs::path parent = fs::path(path).parent_path();
  try {
    if (!parent.empty()) {
      std::error_code ec;
      fs::create_directories(parent, ec);
      if (ec)
        throw IoError("checkpoint " + path + ": cannot create directory " + parent.string() +
                      ": " + ec.message());
    }
    {
      CheckpointWriter w(tmp, path);
      IntegrityRecord rec;
      rec.format_version = kCheckpointFormatVersion;
      rec.step = meta.step;
      rec.tokens_seen = meta.tokens_seen;
      rec.config = meta.config_yaml;
      rec.trainer_state = meta.trainer_state_json;
      w.string_attr(w.file(), "format", "ringtrain");
      w.int_attr(w.file(), "format_version", kCheckpointFormatVersion, H5T_STD_I32LE);
      w.int_attr(w.file(), "step", meta.step, H5T_STD_I64LE);
      w.int_attr(w.file(), "tokens_seen", meta.tokens_seen, H5T_STD_I64LE);
      w.string_attr(w.file(), "config", meta.config_yaml);

      Backend& be = model.backend();
      be.synchronize();
      {
        H5Id g = w.group(w.file(), "model");
        // the fp32 master weights (the compute weights themselves in fp32)
        w.tensors(g.get(), "/model", be, model.master(), rec);
      }
      if (opt) {
        H5Id g = w.group(w.file(), "optimizer");
        w.int_attr(g.get(), "step", opt->steps_taken(), H5T_STD_I64LE);
        w.string_attr(g.get(), "type", opt->config().type);
        rec.optimizer_step = opt->steps_taken();
        rec.optimizer_type = opt->config().type;
        if (opt->exp_avg().allocated()) {
          H5Id m = w.group(g.get(), "exp_avg");
          w.tensors(m.get(), "/optimizer/exp_avg", be, opt->exp_avg(), rec);
          H5Id v = w.group(g.get(), "exp_avg_sq");
          w.tensors(v.get(), "/optimizer/exp_avg_sq", be, opt->exp_avg_sq(), rec);
        }
        if (opt->momentum_buffer().allocated()) {  // SGD with momentum
          H5Id b = w.group(g.get(), "momentum_buffer");
          w.tensors(b.get(), "/optimizer/momentum_buffer", be, opt->momentum_buffer(), rec);
        }
      }
      {
        H5Id g = w.group(w.file(), "trainer");
        w.string_attr(g.get(), "state", meta.trainer_state_json);
      }
      // fixed-length (in the checksummed object header, like the record)
      if (!meta.tokenizer.empty()) w.fixed_string_attr(w.file(), "tokenizer", meta.tokenizer);
      if (!meta.tokenizer_files.empty()) {
        H5Id g = w.group(w.file(), "tokenizer");
        for (const auto& [name, bytes] : meta.tokenizer_files)
          w.bytes(g.get(), "/tokenizer", name, bytes);
      }
      const std::string text = rec.to_json();
      w.fixed_string_attr(w.file(), "integrity", text);
      w.fixed_string_attr(w.file(), "integrity_digest", digest_hex(text.data(), text.size()));
      w.finish();
    }
    if (int err = fsync_path(tmp, O_RDONLY))
      throw IoError("checkpoint " + tmp + ": fsync failed: " + std::strerror(err));
    die_before_rename_if_testing(tmp);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      int err = errno;
      throw IoError("checkpoint " + path + ": cannot rename " + tmp + " to it: " +
                    std::strerror(err));
    }
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  // The checkpoint exists now; a failed directory fsync only weakens
  // durability across a power loss, so it is a warning.
  const std::string dir = parent.empty() ? "." : parent.string();
  if (int err = fsync_path(dir, O_RDONLY | O_DIRECTORY); err && err != EINVAL)
    log_warn("checkpoint %s: fsync of directory %s failed: %s", path.c_str(), dir.c_str(),
             std::strerror(err));
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  if (is_hf_dir(path)) return hf_dir_checkpoint_meta(path);  // SPEC §13
  CheckpointReader r(path);
  return read_meta(r);
}

std::vector<std::pair<std::string, std::string>> read_checkpoint_tokenizer_files(
    const std::string& path) {
  if (is_hf_dir(path)) return hf_tokenizer_files(path);  // SPEC §13
  CheckpointReader r(path);
  check_format(r, read_strings(r));
  std::vector<std::pair<std::string, std::string>> files;
  if (!r.exists(r.file(), "tokenizer")) return files;
  H5Id g = r.group(r.file(), "tokenizer", "no /tokenizer group");
  for (const std::string& name : r.link_names(g.get())) {
    const std::string where = "/tokenizer/" + name;
    H5Id dset(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!dset.valid()) r.fail("cannot open dataset " + where);
    H5Id type(H5Dget_type(dset.get()), H5Tclose);
    H5Id space(H5Dget_space(dset.get()), H5Sclose);
    if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1 ||
        H5Sget_simple_extent_ndims(space.get()) != 1)
      throw IoError("checkpoint " + path + ": dataset " + where +
                    " is not a 1-D uint8 array (the bytes of a tokenizer file)");
    std::string bytes(size_t(H5Sget_simple_extent_npoints(space.get())), '\0');
    if (!bytes.empty() && H5Dread(dset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                  bytes.data()) < 0)
      r.fail("cannot read dataset " + where);
    files.emplace_back(name, std::move(bytes));
  }
  return files;
}

std::unique_ptr<Tokenizer> read_checkpoint_tokenizer(const std::string& path) {
  const CheckpointMeta meta = read_checkpoint_meta(path);
  return tokenizer_from_files(read_checkpoint_tokenizer_files(path), meta.tokenizer,
                              "checkpoint " + path);
}

void load_model_weights(const std::string& path, LlamaModel& model,
                        const std::vector<std::string>& optional) {
  if (is_hf_dir(path)) return load_hf_weights(path, model, optional);  // SPEC §13
  CheckpointReader r(path);
  read_meta(r);  // format, attribute consistency, integrity record
  H5Id g = r.group(r.file(), "model", "no /model group (not a complete checkpoint)");
  load_tensors(r, g.get(), "/model", model.backend(), model.master(), optional);
  model.sync_compute_weights();
}

void load_optimizer_state(const std::string& path, LlamaModel& model, Optimizer& opt) {
  CheckpointReader r(path);
  read_meta(r);
  H5Id g = r.group(r.file(), "optimizer",
                   "no /optimizer group (a weights-only checkpoint cannot resume training; "
                   "use checkpoint.init_from to start from its weights)");
  if (!r.has_attr(g.get(), "step"))
    throw IoError("checkpoint " + path + ": /optimizer has no attribute 'step'");
  const int64_t step = r.int_attr(g.get(), "step");
  if (opt.exp_avg().allocated()) {
    const std::string hint = " (the checkpoint has no AdamW moments; was it written with SGD?)";
    H5Id m = r.group(g.get(), "exp_avg", "no /optimizer/exp_avg group" + hint);
    H5Id v = r.group(g.get(), "exp_avg_sq", "no /optimizer/exp_avg_sq group" + hint);
    load_tensors(r, m.get(), "/optimizer/exp_avg", model.backend(), opt.exp_avg());
    load_tensors(r, v.get(), "/optimizer/exp_avg_sq", model.backend(), opt.exp_avg_sq());
  }
  if (opt.momentum_buffer().allocated()) {
    if (r.exists(g.get(), "momentum_buffer")) {
      H5Id b = r.group(g.get(), "momentum_buffer", "no /optimizer/momentum_buffer group");
      load_tensors(r, b.get(), "/optimizer/momentum_buffer", model.backend(),
                   opt.momentum_buffer());
    } else {
      log_warn("checkpoint %s has no SGD momentum buffer (written without momentum): it starts "
               "from zero",
               path.c_str());
    }
  }
  opt.set_steps_taken(step);
}

CheckpointContents inspect_checkpoint(const std::string& path) {
  if (is_hf_dir(path)) return inspect_hf_dir(path);  // SPEC §13
  CheckpointContents c;
  CheckpointReader r(path);
  CheckpointStrings str;
  c.meta = read_meta(r, &str, &c.optimizer_step);
  std::error_code ec;
  c.file_bytes = int64_t(fs::file_size(path, ec));
  std::vector<float> host;
  int64_t datasets = 0;
  // Reads every float dataset of a group (checksums verified), recording shapes.
  auto read_group = [&](hid_t g, const std::string& group_path,
                        std::vector<CheckpointTensorInfo>* infos) {
    verify_group_against_record(r, g, group_path);
    int64_t n = 0;
    for (const std::string& name : r.link_names(g)) {
      const std::string where = group_path + "/" + name;
      H5O_info_t oinfo;
      if (H5Oget_info_by_name2(g, name.c_str(), &oinfo, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
        r.fail("cannot read object " + where);
      if (oinfo.type != H5O_TYPE_DATASET) continue;
      CheckpointTensorInfo t;
      t.name = name;
      t.shape = r.dataset_shape(g, name, where);
      t.numel = 1;
      for (int64_t d : t.shape) {
        if (d < 0 || (d > 0 && t.numel > (int64_t(1) << 40) / d))
          r.bad("dataset " + where + " has an implausible shape " + shape_str(t.shape));
        t.numel *= d;
      }
      host.assign(size_t(t.numel), 0.f);
      r.read_floats(g, name, where, host);
      if (infos) infos->push_back(t);
      ++n;
    }
    datasets += n;
    return n;
  };
  {
    H5Id g = r.group(r.file(), "model", "no /model group (not a complete checkpoint)");
    read_group(g.get(), "/model", &c.model);
  }
  if (c.meta.has_optimizer) {
    H5Id g = r.group(r.file(), "optimizer", "no /optimizer group");
    c.optimizer_type = str.optimizer_type ? *str.optimizer_type : "unknown";
    for (const char* sub : {"exp_avg", "exp_avg_sq", "momentum_buffer"})
      if (r.exists(g.get(), sub)) {
        H5Id m = r.group(g.get(), sub, "");
        c.optimizer_tensors += read_group(m.get(), std::string("/optimizer/") + sub, nullptr);
      }
  }
  if (r.record()) {
    if (int64_t(r.record()->datasets.size()) != datasets)
      r.bad("the integrity record lists " + std::to_string(r.record()->datasets.size()) +
            " datasets, the file has " + std::to_string(datasets));
    c.integrity = "ok (" + std::to_string(datasets) +
                  " datasets match their xxh3_64 digests and shapes; attributes match the record "
                  "and agree on step " + std::to_string(c.meta.step) + ")";
  } else {
    c.integrity = "no integrity record (a file written by another tool or an older ringtrain): "
                  "checked HDF5 checksums, storage allocation and attribute consistency only";
  }
  return c;
}

// ---- streaming access --------------------------------------------------------

struct WeightsCheckpointWriter::Impl {
  std::string path, tmp;
  std::unique_ptr<CheckpointWriter> w;
  H5Id model, files;
  bool finished = false;
};

WeightsCheckpointWriter::WeightsCheckpointWriter(const std::string& path,
                                                 const CheckpointMeta& meta)
    : impl_(std::make_unique<Impl>()) {
  silence_hdf5_errors();
  impl_->path = path;
  impl_->tmp = path + ".tmp";
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (ec)
      throw IoError("checkpoint " + path + ": cannot create directory " + parent.string() + ": " +
                    ec.message());
  }
  impl_->w = std::make_unique<CheckpointWriter>(impl_->tmp, path);
  CheckpointWriter& w = *impl_->w;
  w.string_attr(w.file(), "format", "ringtrain");
  w.int_attr(w.file(), "format_version", kCheckpointFormatVersion, H5T_STD_I32LE);
  w.int_attr(w.file(), "step", meta.step, H5T_STD_I64LE);
  w.int_attr(w.file(), "tokens_seen", meta.tokens_seen, H5T_STD_I64LE);
  w.string_attr(w.file(), "config", meta.config_yaml);
  {
    H5Id g = w.group(w.file(), "trainer");
    w.string_attr(g.get(), "state", meta.trainer_state_json);
  }
  if (!meta.tokenizer.empty()) w.fixed_string_attr(w.file(), "tokenizer", meta.tokenizer);
  if (!meta.tokenizer_files.empty()) {
    H5Id g = w.group(w.file(), "tokenizer");
    for (const auto& [name, bytes] : meta.tokenizer_files) w.bytes(g.get(), "/tokenizer", name, bytes);
  }
  impl_->model = w.group(w.file(), "model");
}

WeightsCheckpointWriter::~WeightsCheckpointWriter() {
  if (impl_ && !impl_->finished) {
    impl_->model.close();
    impl_->files.close();
    impl_->w.reset();
    std::error_code ec;
    fs::remove(impl_->tmp, ec);
  }
}

void WeightsCheckpointWriter::add_tensor(const std::string& name,
                                         const std::vector<int64_t>& shape, const float* data) {
  impl_->w->tensor(impl_->model.get(), "/model", name, shape, data);
}

void WeightsCheckpointWriter::add_file(const std::string& name, const std::string& bytes) {
  if (!impl_->files.valid()) impl_->files = impl_->w->group(impl_->w->file(), "files");
  impl_->w->bytes(impl_->files.get(), "/files", name, bytes);
}

void WeightsCheckpointWriter::finish() {
  impl_->model.close();
  impl_->files.close();
  impl_->w->finish();
  impl_->w.reset();
  if (int err = fsync_path(impl_->tmp, O_RDONLY))
    throw IoError("checkpoint " + impl_->tmp + ": fsync failed: " + std::strerror(err));
  if (std::rename(impl_->tmp.c_str(), impl_->path.c_str()) != 0) {
    int err = errno;
    throw IoError("checkpoint " + impl_->path + ": cannot rename " + impl_->tmp + " to it: " +
                  std::strerror(err));
  }
  impl_->finished = true;
}

struct CheckpointTensorReader::Impl {
  std::unique_ptr<CheckpointReader> r;
  H5Id model;
};

CheckpointTensorReader::CheckpointTensorReader(const std::string& path)
    : impl_(std::make_unique<Impl>()) {
  impl_->r = std::make_unique<CheckpointReader>(path);
  check_format(*impl_->r, read_strings(*impl_->r));
  impl_->model = impl_->r->group(impl_->r->file(), "model",
                                 "no /model group (not a complete checkpoint)");
}

CheckpointTensorReader::~CheckpointTensorReader() = default;

std::vector<CheckpointTensorInfo> CheckpointTensorReader::model_tensors() const {
  std::vector<CheckpointTensorInfo> out;
  for (const std::string& name : impl_->r->link_names(impl_->model.get())) {
    CheckpointTensorInfo t;
    t.name = name;
    t.shape = impl_->r->dataset_shape(impl_->model.get(), name, "/model/" + name);
    t.numel = 1;
    for (int64_t d : t.shape) t.numel *= d;
    out.push_back(t);
  }
  return out;
}

void CheckpointTensorReader::read(const std::string& name, std::vector<float>& out) const {
  const std::string where = "/model/" + name;
  if (!impl_->r->exists(impl_->model.get(), name))
    throw IoError("checkpoint " + impl_->r->path() + ": no dataset " + where);
  int64_t numel = 1;
  for (int64_t d : impl_->r->dataset_shape(impl_->model.get(), name, where)) numel *= d;
  out.assign(size_t(numel), 0.f);
  impl_->r->read_floats(impl_->model.get(), name, where, out);
}

std::vector<std::pair<std::string, std::string>> CheckpointTensorReader::files() const {
  std::vector<std::pair<std::string, std::string>> out;
  const CheckpointReader& r = *impl_->r;
  for (const char* group : {"files", "tokenizer"}) {
    if (!r.exists(r.file(), group)) continue;
    const std::string where = std::string("/") + group + "/";
    H5Id g = r.group(r.file(), group, "no " + where + " group");
    for (const std::string& name : r.link_names(g.get())) {
      H5Id dset(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
      if (!dset.valid()) r.fail("cannot open dataset " + where + name);
      H5Id space(H5Dget_space(dset.get()), H5Sclose);
      const hssize_t n = H5Sget_simple_extent_npoints(space.get());
      if (n < 0) r.fail("cannot read the size of " + where + name);
      std::string bytes(size_t(n), '\0');
      if (n > 0 &&
          H5Dread(dset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()) < 0)
        r.fail("cannot read dataset " + where + name);
      out.emplace_back(name, std::move(bytes));
    }
  }
  return out;
}

// ---- run-dir helpers -------------------------------------------------------

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "step_%08lld.h5", static_cast<long long>(step));
  return (fs::path(run_dir) / "checkpoints" / name).string();
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  static const std::regex kName(R"(step_(\d+)\.h5)");
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::smatch m;
    const std::string name = it->path().filename().string();
    if (!std::regex_match(name, m, kName)) continue;
    std::error_code fec;
    if (!it->is_regular_file(fec)) continue;
    out.emplace_back(std::stoll(m[1].str()), it->path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void prune_checkpoints(const std::string& run_dir, int keep_last) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  // Stale temporaries from an interrupted save (ours has been renamed by now).
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".h5.tmp") == 0) {
      std::error_code rec;
      fs::remove(it->path(), rec);
    }
  }
  if (keep_last <= 0) return;
  auto all = list_checkpoints(run_dir);
  if (all.size() <= size_t(keep_last)) return;
  for (size_t i = 0; i + size_t(keep_last) < all.size(); ++i) {
    std::error_code rec;
    if (!fs::remove(all[i].second, rec) && rec)
      log_warn("cannot delete old checkpoint %s: %s", all[i].second.c_str(),
               rec.message().c_str());
  }
}

}  // namespace rt
