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

// `keep_strides`: record the strides (frames: padded rows are fine) instead of requiring C-contiguity.
Tensor from_cuda_array_interface(py::handle obj, const char* name, bool keep_strides = false) {
  py::dict cai = obj.attr("__cuda_array_interface__");
  Tensor t;
  t.device = metaedge::Device::kCUDA;
  t.dtype = dtype_from_typestr(py::str(cai["typestr"]), name);
  for (auto s : py::tuple(cai["shape"])) t.shape.push_back(s.cast<int64_t>());
  py::tuple data = cai["data"];
  t.data = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
  if (cai.contains("strides") && !cai["strides"].is_none() && keep_strides) {
    for (auto st : py::tuple(cai["strides"])) t.strides.push_back(st.cast<int64_t>());
  } else if (cai.contains("strides") && !cai["strides"].is_none()) {
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

struct PreprocessSettings {
  metaedge::PreprocessParams gray, rgb;  // mean/std expanded for 1 and 3 output channels
  std::string format;                    // "auto" or a pixel format name
};

PreprocessSettings preprocess_settings(int64_t height, int64_t width, const std::string& color, std::vector<float> mean,
                                       std::vector<float> std, bool invert, const std::string& pixel_format,
                                       const std::string& resize, bool antialias, float pad,
                                       const std::string& yuv_matrix) {
  metaedge::PreprocessParams p;
  p.out_height = height;
  p.out_width = width;
  p.color = metaedge::parse_color_mode(color);
  p.invert = invert;
  p.resize = metaedge::parse_resize_mode(resize);
  p.antialias = antialias;
  p.pad = pad;
  p.yuv = metaedge::parse_yuv_matrix(yuv_matrix);
  if (pixel_format != "auto") metaedge::parse_pixel_format(pixel_format);  // (raises for unknown names)
  PreprocessSettings s{p, p, pixel_format};
  // A setting that does not fit the output stays as given, so the shared checker names it when a frame needs it.
  for (int64_t channels : {1, 3}) {
    metaedge::PreprocessParams& q = channels == 1 ? s.gray : s.rgb;
    q.mean = mean.size() == 1 ? std::vector<float>(static_cast<size_t>(channels), mean[0]) : mean;
    q.std = std.size() == 1 ? std::vector<float>(static_cast<size_t>(channels), std[0]) : std;
  }
  return s;
}

// Frames keep their strides (padded camera rows, crops of a bigger frame, every other frame of a batch) as
// long as each row is contiguous; anything else (channel-reversed or transposed views) is copied here once, into
// `*copy` (which the caller keeps alive for as long as the tensor is used).
Tensor to_frames(py::handle obj, const std::string& format_name, metaedge::PixelFormat* format, py::object* copy) {
  if (!py::isinstance<py::array>(obj)) {
    if (!py::hasattr(obj, "__cuda_array_interface__"))
      throw metaedge::ArgumentTypeError("`frames`: expected a uint8 numpy array or a CUDA array, got " +
                                        std::string(py::str(py::type::of(obj).attr("__name__"))));
    Tensor t = from_cuda_array_interface(obj, "frames", true);
    *format = format_name == "auto" ? metaedge::infer_pixel_format(t) : metaedge::parse_pixel_format(format_name);
    return t;
  }
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  auto tensor_of = [](const py::array& a) {
    Tensor t;
    t.data = const_cast<void*>(a.data());
    if (a.dtype().kind() != 'u' || a.itemsize() != 1)
      throw metaedge::ArgumentTypeError("`frames`: expected uint8 pixels (0..255), got dtype " +
                                        std::string(py::str(a.dtype())));
    t.dtype = DType::kUInt8;
    t.shape.assign(a.shape(), a.shape() + a.ndim());
    t.strides.assign(a.strides(), a.strides() + a.ndim());
    return t;
  };
  Tensor t = tensor_of(arr);
  *format = format_name == "auto" ? metaedge::infer_pixel_format(t) : metaedge::parse_pixel_format(format_name);
  // The row axis: 0 for a single frame, 1 for a batch (gray [h, w, 1] is single; gray batches are 4-d).
  const int64_t single_ndim = *format == metaedge::PixelFormat::kNV12 ? 2
                              : (*format == metaedge::PixelFormat::kGray && t.ndim() == 2) ? 2 : 3;
  const int64_t row_axis = t.ndim() > single_ndim ? 1 : 0;
  bool usable = true;
  int64_t expected = arr.itemsize();
  for (int64_t a = t.ndim() - 1; a >= 0; --a) {
    if (t.shape[a] > 1 && (a > row_axis ? t.strides[a] != expected : t.strides[a] <= 0)) usable = false;
    if (a > row_axis) expected *= t.shape[a];
  }
  if (!usable) {
    py::array contiguous = py::array::ensure(arr, py::array::c_style);
    if (!contiguous) throw py::error_already_set();
    t = tensor_of(contiguous);
    *copy = std::move(contiguous);
    t.strides.clear();
  }
  return t;
}

// The boxes of `rois` (None, or int64 [n, 4] from metaedge.kernels) as a tensor; false when there are none.
bool to_rois(py::handle rois, Tensor* out) {
  if (rois.is_none()) return false;
  *out = to_tensor(rois, "rois");
  return true;
}

// preprocess with its settings converted once (metaedge.kernels.Preprocessor); each call allocates the
// [n, C, H, W] output of host frames. A single frame is a batch of one, so no view needs to be made in Python.
class BoundPreprocess {
 public:
  explicit BoundPreprocess(PreprocessSettings settings) : s_(std::move(settings)) {}
  py::array_t<float> call(py::handle frames, py::handle rois, py::handle pixel_format) const {
    metaedge::PixelFormat format;
    py::object copy;
    const Tensor tf = to_frames(frames, pixel_format.is_none() ? s_.format : py::str(pixel_format).cast<std::string>(),
                                &format, &copy);
    if (tf.is_cuda())
      throw metaedge::ArgumentError("`frames`: a CUDA array; the bound pre-processing takes host frames "
                                    "(metaedge.kernels.preprocess takes both)");
    Tensor tr;
    const bool has_rois = to_rois(rois, &tr);
    const metaedge::FrameLayout layout = metaedge::check_frames(tf, format);
    if (has_rois) metaedge::check_rois(tr, layout);  // (before the output is sized by it)
    const int64_t channels = metaedge::preprocess_output_channels(format, s_.gray.color);
    const metaedge::PreprocessParams& params = channels == 1 ? s_.gray : s_.rgb;
    py::array_t<float> out({metaedge::preprocess_output_count(layout, has_rois ? &tr : nullptr), channels,
                            params.out_height, params.out_width});
    const Tensor to = to_tensor(out, "out");
    {
      py::gil_scoped_release nogil;
      metaedge::preprocess(tf, format, has_rois ? &tr : nullptr, params, to);
    }
    return out;
  }

 private:
  PreprocessSettings s_;
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
      .def(py::init([](int64_t height, int64_t width, const std::string& color, std::vector<float> mean,
                       std::vector<float> std, bool invert, const std::string& pixel_format, const std::string& resize,
                       bool antialias, float pad, const std::string& yuv_matrix) {
             return BoundPreprocess(preprocess_settings(height, width, color, std::move(mean), std::move(std), invert,
                                                        pixel_format, resize, antialias, pad, yuv_matrix));
           }),
           py::arg("height"), py::arg("width"), py::arg("color"), py::arg("mean"), py::arg("std"), py::arg("invert"),
           py::arg("pixel_format"), py::arg("resize"), py::arg("antialias"), py::arg("pad"), py::arg("yuv_matrix"))
      .def("__call__", &BoundPreprocess::call, py::arg("frames"), py::arg("rois") = py::none(),
           py::arg("pixel_format") = py::none());

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

  // The general entry (metaedge.kernels.preprocess): host or CUDA frames, output allocated by the caller
  // (preprocess_output_shape says its shape).
  m.def("preprocess", [](py::handle frames, const std::string& pixel_format, py::handle rois, int64_t height,
                         int64_t width, const std::string& color, std::vector<float> mean, std::vector<float> std,
                         bool invert, const std::string& resize, bool antialias, float pad,
                         const std::string& yuv_matrix, py::handle out) {
    const PreprocessSettings s = preprocess_settings(height, width, color, std::move(mean), std::move(std), invert,
                                                     pixel_format, resize, antialias, pad, yuv_matrix);
    metaedge::PixelFormat format;
    py::object copy;
    const Tensor tf = to_frames(frames, s.format, &format, &copy), to = to_tensor(out, "out");
    Tensor tr;
    const bool has_rois = to_rois(rois, &tr);
    const metaedge::PreprocessParams& params =
        metaedge::preprocess_output_channels(format, s.gray.color) == 1 ? s.gray : s.rgb;
    {
      py::gil_scoped_release nogil;
      metaedge::preprocess(tf, format, has_rois ? &tr : nullptr, params, to);
    }
  }, py::arg("frames"), py::arg("pixel_format"), py::arg("rois"), py::arg("height"), py::arg("width"),
     py::arg("color"), py::arg("mean"), py::arg("std"), py::arg("invert"), py::arg("resize"), py::arg("antialias"),
     py::arg("pad"), py::arg("yuv_matrix"), py::arg("out"));
  m.def("preprocess_output_shape", [](py::handle frames, const std::string& pixel_format, py::handle rois,
                                      int64_t height, int64_t width, const std::string& color) {
    metaedge::PixelFormat format;
    py::object copy;
    const Tensor tf = to_frames(frames, pixel_format, &format, &copy);
    const metaedge::FrameLayout layout = metaedge::check_frames(tf, format);
    Tensor tr;
    const bool has_rois = to_rois(rois, &tr);
    if (has_rois) metaedge::check_rois(tr, layout);
    return py::make_tuple(metaedge::preprocess_output_count(layout, has_rois ? &tr : nullptr),
                          metaedge::preprocess_output_channels(format, metaedge::parse_color_mode(color)), height,
                          width);
  }, py::arg("frames"), py::arg("pixel_format"), py::arg("rois"), py::arg("height"), py::arg("width"),
     py::arg("color"));

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
