// Tiny HDF5 helpers for tests that exchange tensors with Python scripts.
#pragma once

#include <hdf5.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace rt::testing {

class H5File {
 public:
  H5File(const std::string& path, bool create) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    id_ = create ? H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)
                 : H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (id_ < 0) throw std::runtime_error("cannot open " + path);
  }
  ~H5File() { H5Fclose(id_); }
  hid_t id() const { return id_; }

  void write_floats(const std::string& name, const float* data, std::vector<hsize_t> shape) {
    write(name, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, data, shape);
  }
  void write_ints(const std::string& name, const int32_t* data, std::vector<hsize_t> shape) {
    write(name, H5T_NATIVE_INT32, H5T_STD_I32LE, data, shape);
  }
  std::vector<double> read_doubles(const std::string& name) {
    hid_t d = H5Dopen2(id_, name.c_str(), H5P_DEFAULT);
    if (d < 0) throw std::runtime_error("no dataset " + name);
    hid_t sp = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    std::vector<double> out(size_t(n > 0 ? n : 1));
    H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data());
    H5Sclose(sp);
    H5Dclose(d);
    return out;
  }
  void attr_double(const char* name, double v) { attr(name, H5T_NATIVE_DOUBLE, &v); }
  void attr_int(const char* name, long long v) { attr(name, H5T_NATIVE_LLONG, &v); }
  void attr_string(const char* name, const std::string& v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, v.size() + 1);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(id_, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, v.c_str());
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
  }

 private:
  void write(const std::string& name, hid_t mem, hid_t file, const void* data,
             std::vector<hsize_t> shape) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t sp = H5Screate_simple(int(shape.size()), shape.data(), nullptr);
    hid_t d = H5Dcreate2(id_, name.c_str(), file, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (d < 0) throw std::runtime_error("cannot create dataset " + name);
    H5Dwrite(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(d);
    H5Sclose(sp);
    H5Pclose(lcpl);
  }
  void attr(const char* name, hid_t type, const void* v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(id_, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type, v);
    H5Aclose(a);
    H5Sclose(sp);
  }
  hid_t id_ = -1;
};

}  // namespace rt::testing
