// The Python module metaedge._C: conversions and m.def only. Validation lives in csrc/ops (shared by CPU
// and CUDA), maths in csrc/cpu and csrc/cuda, and the documented Python face in metaedge/kernels.py.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>

#include "cpu/cpu_kernels.h"
#include "cpu/gemm.h"
#include "metaedge/checks.h"
#include "metaedge/ops.h"
#if METAEDGE_WITH_CUDA
#include "cuda/cuda_kernels.h"
#include "cuda/cuda_memory.h"
#endif

namespace py = pybind11;
using metaedge::DType;
using metaedge::Tensor;

namespace {

// Array-interface type strings: byte order, kind, item size ("<f4", "|u1"). `shown` names the type in the
// error (a numpy dtype name; the type string itself when empty).
DType dtype_from_typestr(const std::string& typestr, const char* name, py::handle shown = py::handle()) {
  const std::string t = typestr.size() == 3 ? typestr.substr(1) : typestr;
  if (t == "f4") return DType::kFloat32;
  if (t == "f2") return DType::kFloat16;
  if (t == "i8") return DType::kInt64;
  if (t == "i4") return DType::kInt32;
  if (t == "u1") return DType::kUInt8;
  throw metaedge::ArgumentTypeError(std::string("`") + name +
                                    "`: expected float32, float16, int64, int32 or uint8 data, got " +
                                    (shown ? std::string(py::str(shown)) : "type '" + typestr + "'"));
}

Tensor from_cuda_array_interface(py::handle obj, const char* name) {
  py::dict cai = obj.attr("__cuda_array_interface__");
  Tensor t;
  t.device = metaedge::Device::kCUDA;
  t.dtype = dtype_from_typestr(py::str(cai["typestr"]), name);
  for (auto s : py::tuple(cai["shape"])) t.shape.push_back(s.cast<int64_t>());
  py::tuple data = cai["data"];
  t.data = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    int64_t expected = metaedge::dtype_size(t.dtype);
    py::tuple strides = cai["strides"];
    for (int64_t axis = t.ndim() - 1; axis >= 0; --axis) {
      if (t.shape[axis] > 1 && strides[axis].cast<int64_t>() != expected)
        throw metaedge::ArgumentError(std::string("`") + name +
                                      "`: expected a C-contiguous CUDA array, got strides " +
                                      std::string(py::str(strides)) + " for shape " +
                                      metaedge::shape_str(t.shape));
      expected *= t.shape[axis];
    }
  }
  if (cai.contains("stream") && !cai["stream"].is_none()) {
    const auto stream = cai["stream"].cast<std::uintptr_t>();
    t.stream = stream == 1 ? 0 : stream;  // 1 = legacy default stream in the v3 protocol
  }
  if (py::hasattr(obj, "device_index")) {
    t.device_index = obj.attr("device_index").cast<int>();
  } else {
#if METAEDGE_WITH_CUDA
    // Foreign arrays (torch, CuPy) don't say which device holds them in the protocol: ask the driver.
    const int device = metaedge::cuda::pointer_device(reinterpret_cast<std::uintptr_t>(t.data));
    if (device >= 0) t.device_index = device;
#endif
  }
  return t;
}

Tensor to_tensor(py::handle obj, const char* name) {
  // numpy is tested first: asking a numpy array for __cuda_array_interface__ raises and clears an
  // AttributeError, about a microsecond per argument on the per-frame path.
  if (!py::isinstance<py::array>(obj)) {
    if (py::hasattr(obj, "__cuda_array_interface__")) return from_cuda_array_interface(obj, name);
    throw metaedge::ArgumentTypeError(std::string("`") + name + "`: expected a numpy array or a CUDA array, got " +
                                      std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!(arr.flags() & py::array::c_style))
    throw metaedge::ArgumentError(std::string("`") + name + "`: expected a C-contiguous array (metaedge.kernels "
                                  "makes inputs contiguous; call it rather than metaedge._C)");
  Tensor t;
  // Read-only inputs are fine (e.g. copy-on-write snapshots); in-place and output arrays are checked for
  // writability by metaedge.kernels before they get here.
  t.data = const_cast<void*>(arr.data());
  py::dtype dt = arr.dtype();
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  constexpr char kForeignOrder = '<';
#else
  constexpr char kForeignOrder = '>';
#endif
  if (dt.byteorder() == kForeignOrder)
    throw metaedge::ArgumentTypeError(std::string("`") + name + "`: expected native byte order, got " +
                                      std::string(py::str(dt)) + " (x.astype(x.dtype.newbyteorder('=')) converts it)");
  // Kind and size straight from the descriptor: no strings on the per-frame path.
  const char kind = dt.kind();
  const py::ssize_t bytes = dt.itemsize();
  if (kind == 'f' && bytes == 4) t.dtype = DType::kFloat32;
  else if (kind == 'f' && bytes == 2) t.dtype = DType::kFloat16;
  else if (kind == 'i' && bytes == 8) t.dtype = DType::kInt64;
  else if (kind == 'i' && bytes == 4) t.dtype = DType::kInt32;
  else if (kind == 'u' && bytes == 1) t.dtype = DType::kUInt8;
  else t.dtype = dtype_from_typestr(std::string(1, kind) + std::to_string(bytes), name, dt);  // raises
  t.shape.assign(arr.shape(), arr.shape() + arr.ndim());
  return t;
}

// topk against one class matrix (metaedge.kernels.PrototypeMatcher): it keeps the class matrix and, up to
// kMaxPackedBytes, packs its own copy of it (pack_prototypes: 64-byte aligned, never exposed, so it cannot
// disagree with the matrix); each call converts only the queries and allocates the outputs here - most of
// the fixed cost of a per-frame call.
class BoundTopk {
 public:
  BoundTopk(py::array protos, const std::string& metric)
      : protos_(std::move(protos)), metric_(metaedge::parse_metric(metric)) {
    protos_tensor_ = to_tensor(protos_, "protos");
    metaedge::check_ndim(protos_tensor_, "protos", 2, "[C, d]");
    const int64_t C = protos_tensor_.size(0), d = protos_tensor_.size(1);
    if (C == 0) throw metaedge::ArgumentError("`protos`: expected at least one class, got shape [0, d]");
    // Measured (tools/bench/kernels.py --only matcher): the packed copy wins while the matrix is cache-sized
    // and scoring is bound by arithmetic (1000x64: 0.4-0.6x topk's time; 10000x64 and 1000x512: 0.6-0.85x);
    // once it streams from DRAM (10000x512: 1.0-1.3x, 100000 classes: about 1x) it only costs memory.
    if (static_cast<double>(C) * static_cast<double>(d) * sizeof(float) > kMaxPackedBytes) return;
    const int64_t groups = (C + metaedge::cpu::kPackedLanes - 1) / metaedge::cpu::kPackedLanes;
    const size_t bytes = (static_cast<size_t>(groups * d * metaedge::cpu::kPackedLanes) * sizeof(float) + 63) / 64 * 64;
    packed_.reset(static_cast<float*>(std::aligned_alloc(64, std::max<size_t>(bytes, 64))));
    if (!packed_) throw std::bad_alloc();
    packed_tensor_.data = packed_.get();
    packed_tensor_.shape = {groups, d, metaedge::cpu::kPackedLanes};
    metaedge::pack_prototypes(protos_tensor_, metric_, packed_tensor_);
  }
  py::tuple topk(py::handle queries, int64_t k) const {
    const Tensor tq = to_tensor(queries, "queries");
    metaedge::check_ndim(tq, "queries", 2, "[b, d]");
    metaedge::check_topk_k(k, protos_tensor_.size(0));
    py::array_t<float> scores({tq.size(0), k});
    py::array_t<int64_t> indices({tq.size(0), k});
    const Tensor ts = to_tensor(scores, "scores"), ti = to_tensor(indices, "indices");
    {
      py::gil_scoped_release nogil;
      metaedge::topk(tq, protos_tensor_, k, metric_, ts, ti, packed_ ? &packed_tensor_ : nullptr);
    }
    return py::make_tuple(std::move(scores), std::move(indices));
  }
  bool packed() const { return static_cast<bool>(packed_); }
  static constexpr double kMaxPackedBytes = 8 << 20;

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  py::array protos_;  // keeps the memory of protos_tensor_ alive
  Tensor protos_tensor_, packed_tensor_;
  std::unique_ptr<float[], Free> packed_;
  metaedge::Metric metric_;
};

metaedge::PreprocessParams preprocess_params(int64_t height, int64_t width, const std::string& color,
                                             std::vector<float> mean, std::vector<float> std, bool invert) {
  metaedge::PreprocessParams params;
  params.out_height = height;
  params.out_width = width;
  params.color = metaedge::parse_color_mode(color);
  params.mean = std::move(mean);
  params.std = std::move(std);
  params.invert = invert;
  return params;
}

// preprocess with its settings converted once (metaedge.kernels.Preprocessor): `mean`/`std` hold one value
// or one per output channel, expanded here for 1 and 3 output channels; each call allocates the
// [b, C, H, W] output. A single [h, w, c] or [h, w] image is a batch of one, so no view needs to be made in
// Python.
class BoundPreprocess {
 public:
  BoundPreprocess(int64_t height, int64_t width, const std::string& color, std::vector<float> mean,
                  std::vector<float> std, bool invert)
      : given_(preprocess_params(height, width, color, std::move(mean), std::move(std), invert)) {
    // A setting that does not fit stays as given, so the shared checker names it when a frame needs it.
    for (int64_t channels : {1, 3}) {
      metaedge::PreprocessParams& p = channels == 1 ? gray_ : rgb_;
      p = given_;
      expand(p.mean, channels);
      expand(p.std, channels);
    }
  }
  py::array_t<float> call(py::handle images) const {
    Tensor ti = to_tensor(images, "images");
    if (ti.ndim() < 2 || ti.ndim() > 4)
      throw metaedge::ArgumentError("`images`: expected [b, h, w, c], [h, w, c] or [h, w] (uint8, HWC), got shape " +
                                    metaedge::shape_str(ti.shape));
    if (ti.ndim() > 2) metaedge::check_image_channels(ti);  // (before the output is sized by it)
    if (ti.ndim() == 3) ti.shape.insert(ti.shape.begin(), 1);
    if (ti.ndim() == 2) ti.shape = {1, ti.shape[0], ti.shape[1], 1};
    const int64_t channels = metaedge::preprocess_output_channels(ti.size(3), given_.color);
    const metaedge::PreprocessParams* params = channels == 1 ? &gray_ : &rgb_;
    py::array_t<float> out({ti.size(0), channels, given_.out_height, given_.out_width});
    const Tensor to = to_tensor(out, "out");
    {
      py::gil_scoped_release nogil;
      metaedge::preprocess(ti, *params, to);
    }
    return out;
  }

 private:
  static void expand(std::vector<float>& values, int64_t channels) {
    if (values.size() == 1) values.assign(static_cast<size_t>(channels), values[0]);
  }
  metaedge::PreprocessParams given_, gray_, rgb_;
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "metaedge native kernels; use metaedge.kernels, which validates and documents them";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const metaedge::ArgumentTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  m.def("l2_normalize", [](py::handle x, py::handle out, double eps) {
    Tensor tx = to_tensor(x, "x"), tout = to_tensor(out, "out");
    py::gil_scoped_release nogil;
    metaedge::l2_normalize(tx, tout, eps);
  }, py::arg("x"), py::arg("out"), py::arg("eps"));

  m.def("class_prototypes", [](py::handle emb, py::handle labels, int64_t num_classes, py::handle protos,
                               py::handle counts) {
    Tensor te = to_tensor(emb, "emb"), tl = to_tensor(labels, "labels"), tp = to_tensor(protos, "protos"),
           tc = to_tensor(counts, "counts");
    py::gil_scoped_release nogil;
    metaedge::class_prototypes(te, tl, num_classes, tp, tc);
  }, py::arg("emb"), py::arg("labels"), py::arg("num_classes"), py::arg("protos"), py::arg("counts"));

  m.def("update_prototypes", [](py::handle protos, py::handle counts, py::handle emb, py::handle labels) {
    Tensor tp = to_tensor(protos, "protos"), tc = to_tensor(counts, "counts"), te = to_tensor(emb, "emb"),
           tl = to_tensor(labels, "labels");
    py::gil_scoped_release nogil;
    metaedge::update_prototypes(tp, tc, te, tl);
  }, py::arg("protos"), py::arg("counts"), py::arg("emb"), py::arg("labels"));

  m.def("topk", [](py::handle queries, py::handle protos, int64_t k, const std::string& metric, py::handle scores,
                   py::handle indices) {
    Tensor tq = to_tensor(queries, "queries"), tp = to_tensor(protos, "protos"),
           ts = to_tensor(scores, "scores"), ti = to_tensor(indices, "indices");
    const metaedge::Metric parsed = metaedge::parse_metric(metric);
    py::gil_scoped_release nogil;
    metaedge::topk(tq, tp, k, parsed, ts, ti);
  }, py::arg("queries"), py::arg("protos"), py::arg("k"), py::arg("metric"), py::arg("scores"), py::arg("indices"));

  // module_local: a second copy of this module (an A/B benchmark loads two builds) registers its own types.
  py::class_<BoundTopk>(m, "BoundTopk", py::module_local())
      .def(py::init<py::array, const std::string&>(), py::arg("protos"), py::arg("metric"))
      .def("topk", &BoundTopk::topk, py::arg("queries"), py::arg("k"))
      .def_property_readonly("packed", &BoundTopk::packed)
      .def_readonly_static("max_packed_bytes", &BoundTopk::kMaxPackedBytes);

  py::class_<BoundPreprocess>(m, "BoundPreprocess", py::module_local())
      .def(py::init<int64_t, int64_t, const std::string&, std::vector<float>, std::vector<float>, bool>(),
           py::arg("height"), py::arg("width"), py::arg("color"), py::arg("mean"), py::arg("std"), py::arg("invert"))
      .def("__call__", &BoundPreprocess::call, py::arg("images"));

  // The layout BoundTopk packs (exposed for its tests).
  m.def("pack_prototypes", [](py::handle protos, const std::string& metric, py::handle packed) {
    Tensor tp = to_tensor(protos, "protos"), tpk = to_tensor(packed, "packed");
    const metaedge::Metric parsed = metaedge::parse_metric(metric);
    py::gil_scoped_release nogil;
    metaedge::pack_prototypes(tp, parsed, tpk);
  }, py::arg("protos"), py::arg("metric"), py::arg("packed"));

  // The compact class matrix (metaedge.kernels.CompactClassMatrix owns the buffers and keeps them in step).
  m.def("compact_encode", [](py::handle rows, py::handle slots, const std::string& metric, py::handle center,
                             py::handle codes, py::handle meta) {
    Tensor tr = to_tensor(rows, "rows"), ts = to_tensor(slots, "slots"), tcen = to_tensor(center, "center"),
           tc = to_tensor(codes, "codes"), tm = to_tensor(meta, "meta");
    const metaedge::Metric parsed = metaedge::parse_metric(metric);
    py::gil_scoped_release nogil;
    metaedge::compact_encode(tr, ts, parsed, tcen, tc, tm);
  }, py::arg("rows"), py::arg("slots"), py::arg("metric"), py::arg("center"), py::arg("codes"), py::arg("meta"));
  m.def("compact_topk", [](py::handle queries, py::handle rows, py::handle codes, py::handle meta, py::handle center,
                           int64_t k, const std::string& metric, py::handle scores, py::handle indices,
                           py::handle fp32_rows) {
    Tensor tq = to_tensor(queries, "queries"), tr = to_tensor(rows, "rows"), tc = to_tensor(codes, "codes"),
           tm = to_tensor(meta, "meta"), tcen = to_tensor(center, "center"), ts = to_tensor(scores, "scores"),
           ti = to_tensor(indices, "indices"), tf = to_tensor(fp32_rows, "fp32_rows");
    const metaedge::Metric parsed = metaedge::parse_metric(metric);
    py::gil_scoped_release nogil;
    metaedge::compact_topk(tq, tr, tc, tm, tcen, k, parsed, ts, ti, tf);
  }, py::arg("queries"), py::arg("rows"), py::arg("codes"), py::arg("meta"), py::arg("center"), py::arg("k"),
     py::arg("metric"), py::arg("scores"), py::arg("indices"), py::arg("fp32_rows"));
  m.def("compact_kernel", &metaedge::compact_kernel_name);

  m.def("adapt_head", [](py::handle weights, py::handle velocity, py::handle support, py::handle labels,
                         int64_t steps, double lr, double momentum, double weight_decay, double scale,
                         py::handle losses) {
    Tensor tw = to_tensor(weights, "weights"), tv = to_tensor(velocity, "velocity"),
           ts = to_tensor(support, "support"), tl = to_tensor(labels, "labels"), tloss = to_tensor(losses, "losses");
    py::gil_scoped_release nogil;
    metaedge::adapt_head(tw, tv, ts, tl, steps, lr, momentum, weight_decay, scale, tloss);
  }, py::arg("weights"), py::arg("velocity"), py::arg("support"), py::arg("labels"), py::arg("steps"),
     py::arg("lr"), py::arg("momentum"), py::arg("weight_decay"), py::arg("scale"), py::arg("losses"));

  m.def("preprocess", [](py::handle images, int64_t height, int64_t width, const std::string& color,
                         std::vector<float> mean, std::vector<float> std, bool invert, py::handle out) {
    const metaedge::PreprocessParams params =
        preprocess_params(height, width, color, std::move(mean), std::move(std), invert);
    Tensor ti = to_tensor(images, "images"), to = to_tensor(out, "out");
    py::gil_scoped_release nogil;
    metaedge::preprocess(ti, params, to);
  }, py::arg("images"), py::arg("height"), py::arg("width"), py::arg("color"), py::arg("mean"), py::arg("std"),
     py::arg("invert"), py::arg("out"));

  // Test hook for csrc/cpu/gemm.h (not public API): C[M,N] = alpha op(A) op(B) + beta C on float32 2-d arrays
  // with unit inner stride; leading dimensions come from the row strides, so padded views test lda/ldb/ldc.
  m.def("_sgemm_for_tests", [](bool trans_a, bool trans_b, py::array a, py::array b, float alpha, float beta,
                               py::array c) {
    auto leading_dim = [](const py::array& x, const char* name) -> int64_t {
      if (!x.dtype().is(py::dtype::of<float>()) || x.ndim() != 2)
        throw metaedge::ArgumentError(std::string("`") + name + "`: expected a 2-d float32 array");
      if (x.size() == 0) return std::max<int64_t>(x.shape(1), 1);  // never read; numpy strides are arbitrary
      if (x.strides(1) != 4 || x.strides(0) % 4 != 0 || x.strides(0) < 4 * x.shape(1))
        throw metaedge::ArgumentError(std::string("`") + name + "`: expected rows of unit stride");
      return x.strides(0) / 4;
    };
    const int64_t lda = leading_dim(a, "a"), ldb = leading_dim(b, "b"), ldc = leading_dim(c, "c");
    const int64_t M = c.shape(0), N = c.shape(1), K = trans_a ? a.shape(0) : a.shape(1);
    if ((trans_a ? a.shape(1) : a.shape(0)) != M || (trans_b ? b.shape(1) : b.shape(0)) != K ||
        (trans_b ? b.shape(0) : b.shape(1)) != N || !c.writeable())
      throw metaedge::ArgumentError("_sgemm_for_tests: shapes of op(a), op(b) and c disagree (or c is read-only)");
    const auto* pa = static_cast<const float*>(a.data());
    const auto* pb = static_cast<const float*>(b.data());
    auto* pc = static_cast<float*>(c.mutable_data());
    py::gil_scoped_release nogil;
    metaedge::cpu::sgemm(trans_a, trans_b, M, N, K, alpha, pa, lda, pb, ldb, beta, pc, ldc);
  }, py::arg("trans_a"), py::arg("trans_b"), py::arg("a"), py::arg("b"), py::arg("alpha"), py::arg("beta"),
     py::arg("c"));

  m.def("preprocess_output_channels", [](int64_t channels, const std::string& color) {
    return metaedge::preprocess_output_channels(channels, metaedge::parse_color_mode(color));
  });
  m.def("simd_level", &metaedge::simd_level);
  m.def("openmp_max_threads", &metaedge::openmp_max_threads);
  m.attr("cuda_built") = py::bool_(METAEDGE_WITH_CUDA != 0);

#if METAEDGE_WITH_CUDA
  py::class_<metaedge::cuda::DeviceProperties>(m, "CudaDeviceProperties")
      .def_readonly("name", &metaedge::cuda::DeviceProperties::name)
      .def_readonly("major", &metaedge::cuda::DeviceProperties::major)
      .def_readonly("minor", &metaedge::cuda::DeviceProperties::minor)
      .def_readonly("total_memory", &metaedge::cuda::DeviceProperties::total_memory)
      .def_readonly("multiprocessors", &metaedge::cuda::DeviceProperties::multiprocessors)
      .def_readonly("integrated", &metaedge::cuda::DeviceProperties::integrated)
      .def_readonly("can_map_host_memory", &metaedge::cuda::DeviceProperties::can_map_host_memory);
  m.def("cuda_device_count", []() {
    std::string why;
    const int n = metaedge::cuda::device_count(&why);
    return py::make_tuple(n, why);
  });
  m.def("cuda_runtime_version", &metaedge::cuda::runtime_version);
  m.def("cuda_driver_version", &metaedge::cuda::driver_version);
  m.def("cuda_device_properties", &metaedge::cuda::device_properties);

  // Memory, copies and streams for metaedge.cuda (pointers and stream handles travel as integers).
  namespace mc = metaedge::cuda;
  m.def("cuda_malloc", [](int64_t bytes, int device, std::uintptr_t stream) {
    const mc::Allocation a = mc::malloc_device(bytes, device, stream);
    return py::make_tuple(a.ptr, a.stream_ordered);
  }, py::arg("nbytes"), py::arg("device"), py::arg("stream"));
  m.def("cuda_free", &mc::free_device, py::arg("ptr"), py::arg("device"), py::arg("stream"),
        py::arg("stream_ordered"));
  m.def("cuda_host_alloc", &mc::host_alloc, py::arg("nbytes"), py::arg("mapped"));
  m.def("cuda_host_device_pointer", &mc::host_device_pointer, py::arg("host_ptr"));
  m.def("cuda_free_host", &mc::free_host, py::arg("ptr"));
  m.def("cuda_memcpy", [](std::uintptr_t dst, std::uintptr_t src, int64_t bytes, const std::string& kind,
                          int device, std::uintptr_t stream, bool synchronize) {
    mc::CopyKind k = mc::CopyKind::kDefault;
    if (kind == "h2d") k = mc::CopyKind::kHostToDevice;
    else if (kind == "d2h") k = mc::CopyKind::kDeviceToHost;
    else if (kind == "d2d") k = mc::CopyKind::kDeviceToDevice;
    else if (kind != "default") throw metaedge::ArgumentError("cuda_memcpy: unknown kind '" + kind + "'");
    py::gil_scoped_release nogil;
    mc::copy_bytes(dst, src, bytes, k, device, stream, synchronize);
  }, py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::arg("kind"), py::arg("device"), py::arg("stream"),
     py::arg("synchronize"));
  m.def("cuda_memset", &mc::fill_bytes, py::arg("ptr"), py::arg("value"), py::arg("nbytes"), py::arg("device"),
        py::arg("stream"));
  m.def("cuda_stream_create", &mc::stream_create, py::arg("device"), py::arg("non_blocking"));
  m.def("cuda_stream_destroy", &mc::stream_destroy, py::arg("stream"), py::arg("device"));
  m.def("cuda_stream_synchronize", [](std::uintptr_t stream, int device) {
    py::gil_scoped_release nogil;
    mc::stream_synchronize(stream, device);
  }, py::arg("stream"), py::arg("device"));
  m.def("cuda_device_synchronize", [](int device) {
    py::gil_scoped_release nogil;
    mc::device_synchronize(device);
  }, py::arg("device"));
  m.def("cuda_current_device", &mc::current_device);
  m.def("cuda_pointer_device", &mc::pointer_device, py::arg("ptr"));
#endif
}
