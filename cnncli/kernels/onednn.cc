// oneDNN's convolution (with its bias and ReLU fused as post-ops, for the forward pass) and pooling
// primitives as XLA FFI custom calls (cnncli/kernels/__init__.py).
//
// Layouts are the ones the JAX side already holds: NHWC activations, HWIO kernels; weights are
// reordered into whatever blocked layout the chosen implementation wants (a few KB, each call).
// Operands are fp32 or bf16; a convolution's forward and input gradient return the operands' type,
// its weight gradient fp32 (bf16 products accumulate in fp32 inside oneDNN, as `models/ops._dot` does).
//
// Primitives are created once per shape and kept (creating one costs ~0.1-1 ms, JIT code included).
// Their scratch memory is ours (`scratchpad_mode::user`), one buffer grown to the largest need: with
// oneDNN's own (thread-local) scratchpad, a primitive created on one thread (the tuner asking for its
// implementation) crashed when XLA ran it on another (x64:gemm:jit weight gradients).
// One call at a time per process (`g_mu`): XLA runs a layer's two gradients side by side, and each
// calling thread would start an OpenMP team of its own (2 cores, 4 busy threads: a weight reorder
// took 8-12 ms instead of 0.05). Each call uses every core through one team instead.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

std::mutex g_mu;

dnnl::engine& eng() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& strm() {
  static dnnl::stream s(eng());
  return s;
}

// Everything that decides a primitive: direction, dtype, shapes, strides, pads.
struct Geo {
  int64_t kind;  // 0 conv fwd, 1 conv bwd data, 2 conv bwd weights, 3 max pool fwd, 4 max pool bwd,
                 // 5 avg pool fwd, 6 avg pool bwd, 7 conv fwd + bias, 8 conv fwd + bias, then ReLU
  int64_t bf16;
  int64_t n, h, w, c;     // input (NHWC)
  int64_t kh, kw, o;      // window and output channels (pooling: o == c)
  int64_t oh, ow;         // output spatial size
  int64_t sh, sw, pt, pb, pl, pr;
  int64_t groups;         // convolution: c / the kernel's input channels (c for a depthwise one); pooling: 1
  std::string key() const {
    std::ostringstream s;
    s << kind << ':' << bf16 << ':' << n << ',' << h << ',' << w << ',' << c << ':' << kh << ',' << kw << ','
      << o << ':' << oh << ',' << ow << ':' << sh << ',' << sw << ':' << pt << ',' << pb << ',' << pl << ','
      << pr << ':' << groups;
    return s.str();
  }
};

memory::data_type act_type(const Geo& g) { return g.bf16 ? memory::data_type::bf16 : memory::data_type::f32; }

bool is_conv(int64_t kind) { return kind <= 2 || kind >= 7; }
bool is_conv_fwd(int64_t kind) { return kind == 0 || kind >= 7; }

// A fused forward's bias: fp32 whatever the operands (the parameter as JAX holds it; oneDNN adds it
// to the fp32 accumulator before rounding).
memory::desc bias_desc(const Geo& g) { return memory::desc({g.o}, memory::data_type::f32, tag::a); }

struct Prim {
  dnnl::primitive prim;
  memory::desc scratch, scratch_fwd, scratch_reorder;  // what each needs of the shared scratch buffer
  std::string impl;
  // Conv: the weights as the implementation wants them, and the reorder from/to HWIO.
  memory::desc w_user, w_prim;
  bool w_reorder = false;
  dnnl::reorder w_to_prim;  // fwd, bwd data: HWIO -> blocked; bwd weights: blocked -> HWIO
  std::unique_ptr<memory> w_mem;
  // Max pooling backward: the forward (training) that makes the workspace, its scratch buffers.
  dnnl::primitive fwd_train;
  std::unique_ptr<memory> ws_mem, scratch_dst;
};

std::unordered_map<std::string, std::unique_ptr<Prim>>& cache() {
  static std::unordered_map<std::string, std::unique_ptr<Prim>> c;
  return c;
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

// The shared scratch buffer (under g_mu): memory over it for `d`, grown first if needed.
memory scratch(const memory::desc& d) {
  static std::unique_ptr<uint8_t[]> buf;
  static size_t size = 0;
  size_t need = d.get_size() + 64;
  if (need > size) {
    buf.reset(new uint8_t[need]);
    size = need;
  }
  auto p = reinterpret_cast<uintptr_t>(buf.get());
  return memory(d, eng(), reinterpret_cast<void*>((p + 63) & ~uintptr_t(63)));
}

memory::desc nhwc(int64_t n, int64_t h, int64_t w, int64_t c, memory::data_type t) {
  return memory::desc({n, c, h, w}, t, tag::nhwc);
}

void set_weights(Prim& p, const memory::desc& user, const memory::desc& prim, bool to_user) {
  p.w_user = user;
  p.w_prim = prim;
  p.w_reorder = user != prim;
  if (p.w_reorder) {
    p.w_mem = std::make_unique<memory>(prim, eng());
    auto pd = to_user ? dnnl::reorder::primitive_desc(eng(), prim, eng(), user, user_scratchpad())
                      : dnnl::reorder::primitive_desc(eng(), user, eng(), prim, user_scratchpad());
    p.scratch_reorder = pd.scratchpad_desc();
    p.w_to_prim = dnnl::reorder(pd);
  }
}

// The weights as JAX holds them: HWIO, or for G groups (kh, kw, c/G, o) = oneDNN's (G, o/G, c/G, kh, kw)
// in h, w, i, g, o order (hwigo); `tag::any` lets the primitive choose its own layout.
memory::desc weights(const Geo& g, memory::data_type t, tag layout) {
  if (g.groups == 1) return memory::desc({g.o, g.c, g.kh, g.kw}, t, layout);
  return memory::desc({g.groups, g.o / g.groups, g.c / g.groups, g.kh, g.kw}, t,
                      layout == tag::any ? tag::any : tag::hwigo);
}

std::unique_ptr<Prim> make_conv(const Geo& g) {
  using namespace dnnl;
  auto t = act_type(g);
  memory::dims strides{g.sh, g.sw}, pl{g.pt, g.pl}, pr{g.pb, g.pr};
  auto src = nhwc(g.n, g.h, g.w, g.c, t), dst = nhwc(g.n, g.oh, g.ow, g.o, t);
  auto w_any = weights(g, t, tag::any);
  auto p = std::make_unique<Prim>();
  auto attr = user_scratchpad();
  if (g.kind >= 7) {
    // The bias and the ReLU applied by the kernel as it writes each output block (post-ops): the
    // output is written once instead of being read and written again by an elementwise pass.
    if (g.kind == 8) {
      post_ops po;
      po.append_eltwise(algorithm::eltwise_relu, 0.f, 0.f);
      attr.set_post_ops(po);
    }
    auto fused = convolution_forward::primitive_desc(eng(), prop_kind::forward_inference,
                                                     algorithm::convolution_direct, src, w_any, bias_desc(g), dst,
                                                     strides, pl, pr, attr);
    set_weights(*p, weights(g, t, tag::hwio), fused.weights_desc(), false);
    p->impl = fused.impl_info_str();
    p->scratch = fused.scratchpad_desc();
    p->prim = convolution_forward(fused);
    return p;
  }
  auto fwd = convolution_forward::primitive_desc(eng(), g.kind == 0 ? prop_kind::forward_inference
                                                                    : prop_kind::forward_training,
                                                 algorithm::convolution_direct, src, w_any, dst, strides, pl, pr,
                                                 attr);
  if (g.kind == 0) {
    set_weights(*p, weights(g, t, tag::hwio), fwd.weights_desc(), false);
    p->impl = fwd.impl_info_str();
    p->scratch = fwd.scratchpad_desc();
    p->prim = convolution_forward(fwd);
  } else if (g.kind == 1) {
    auto bwd = convolution_backward_data::primitive_desc(eng(), algorithm::convolution_direct, src, w_any, dst,
                                                         strides, pl, pr, fwd, attr);
    set_weights(*p, weights(g, t, tag::hwio), bwd.weights_desc(), false);
    p->impl = bwd.impl_info_str();
    p->scratch = bwd.scratchpad_desc();
    p->prim = convolution_backward_data(bwd);
  } else {
    auto dw_any = weights(g, memory::data_type::f32, tag::any);
    auto bwd = convolution_backward_weights::primitive_desc(eng(), algorithm::convolution_direct, src, dw_any, dst,
                                                            strides, pl, pr, fwd, attr);
    set_weights(*p, weights(g, memory::data_type::f32, tag::hwio), bwd.diff_weights_desc(), true);
    p->impl = bwd.impl_info_str();
    p->scratch = bwd.scratchpad_desc();
    p->prim = convolution_backward_weights(bwd);
  }
  return p;
}

std::unique_ptr<Prim> make_pool(const Geo& g) {
  using namespace dnnl;
  auto t = act_type(g);
  auto alg = g.kind <= 4 ? algorithm::pooling_max : algorithm::pooling_avg_exclude_padding;
  memory::dims strides{g.sh, g.sw}, kernel{g.kh, g.kw}, dil{0, 0}, pl{g.pt, g.pl}, pr{g.pb, g.pr};
  auto src = nhwc(g.n, g.h, g.w, g.c, t), dst = nhwc(g.n, g.oh, g.ow, g.c, t);
  auto p = std::make_unique<Prim>();
  auto attr = user_scratchpad();
  bool backward = g.kind == 4 || g.kind == 6;
  auto fwd = pooling_forward::primitive_desc(eng(), backward ? prop_kind::forward_training
                                                             : prop_kind::forward_inference,
                                             alg, src, dst, strides, kernel, dil, pl, pr, attr);
  if (!backward) {
    p->impl = fwd.impl_info_str();
    p->scratch = fwd.scratchpad_desc();
    p->prim = pooling_forward(fwd);
    return p;
  }
  auto bwd = pooling_backward::primitive_desc(eng(), alg, src, dst, strides, kernel, dil, pl, pr, fwd, attr);
  p->impl = bwd.impl_info_str();
  p->scratch = bwd.scratchpad_desc();
  p->prim = pooling_backward(bwd);
  if (g.kind == 4) {  // max: which input won each window comes from a forward pass (the workspace)
    p->scratch_fwd = fwd.scratchpad_desc();
    p->fwd_train = pooling_forward(fwd);
    p->ws_mem = std::make_unique<memory>(fwd.workspace_desc(), eng());
    p->scratch_dst = std::make_unique<memory>(dst, eng());
  }
  return p;
}

Prim& get(const Geo& g) {  // under g_mu
  auto& c = cache();
  auto k = g.key();
  auto it = c.find(k);
  if (it == c.end()) it = c.emplace(k, is_conv(g.kind) ? make_conv(g) : make_pool(g)).first;
  return *it->second;
}

void run_conv(const Geo& g, void* a, void* b, void* out, void* bias = nullptr) {
  // fwd: a = x, b = w, out = y (fused: + bias); bwd data: a = dy, b = w, out = dx; bwd weights: a = x,
  // b = dy, out = dw
  auto t = act_type(g);
  auto src = nhwc(g.n, g.h, g.w, g.c, t), dst = nhwc(g.n, g.oh, g.ow, g.o, t);
  std::lock_guard<std::mutex> lock(g_mu);
  Prim& p = get(g);
  auto& s = strm();
  memory user_w(p.w_user, eng(), g.kind == 2 ? out : b);
  memory& w = p.w_reorder ? *p.w_mem : user_w;
  auto reorder = [&](memory& from, memory& to) {  // the weights between HWIO and the kernel's layout
    if (p.w_reorder)
      p.w_to_prim.execute(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}, {DNNL_ARG_SCRATCHPAD, scratch(p.scratch_reorder)}});
  };
  if (is_conv_fwd(g.kind)) {
    reorder(user_w, w);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(src, eng(), a)}, {DNNL_ARG_WEIGHTS, w},
                                         {DNNL_ARG_DST, memory(dst, eng(), out)},
                                         {DNNL_ARG_SCRATCHPAD, scratch(p.scratch)}};
    if (g.kind >= 7) args.insert({DNNL_ARG_BIAS, memory(bias_desc(g), eng(), bias)});
    p.prim.execute(s, args);
  } else if (g.kind == 1) {
    reorder(user_w, w);
    p.prim.execute(s, {{DNNL_ARG_DIFF_DST, memory(dst, eng(), a)}, {DNNL_ARG_WEIGHTS, w},
                       {DNNL_ARG_DIFF_SRC, memory(src, eng(), out)}, {DNNL_ARG_SCRATCHPAD, scratch(p.scratch)}});
  } else {
    p.prim.execute(s, {{DNNL_ARG_SRC, memory(src, eng(), a)}, {DNNL_ARG_DIFF_DST, memory(dst, eng(), b)},
                       {DNNL_ARG_DIFF_WEIGHTS, w}, {DNNL_ARG_SCRATCHPAD, scratch(p.scratch)}});
    reorder(w, user_w);
  }
  s.wait();
}

void run_pool(const Geo& g, void* x, void* dy, void* out) {
  // fwd: x -> out = y; bwd: x, dy -> out = dx
  auto t = act_type(g);
  auto src = nhwc(g.n, g.h, g.w, g.c, t), dst = nhwc(g.n, g.oh, g.ow, g.c, t);
  std::lock_guard<std::mutex> lock(g_mu);
  Prim& p = get(g);
  auto& s = strm();
  if (g.kind == 3 || g.kind == 5) {
    p.prim.execute(s, {{DNNL_ARG_SRC, memory(src, eng(), x)}, {DNNL_ARG_DST, memory(dst, eng(), out)},
                       {DNNL_ARG_SCRATCHPAD, scratch(p.scratch)}});
  } else if (g.kind == 4) {
    p.fwd_train.execute(s, {{DNNL_ARG_SRC, memory(src, eng(), x)}, {DNNL_ARG_DST, *p.scratch_dst},
                            {DNNL_ARG_WORKSPACE, *p.ws_mem}, {DNNL_ARG_SCRATCHPAD, scratch(p.scratch_fwd)}});
    p.prim.execute(s, {{DNNL_ARG_DIFF_DST, memory(dst, eng(), dy)}, {DNNL_ARG_WORKSPACE, *p.ws_mem},
                       {DNNL_ARG_DIFF_SRC, memory(src, eng(), out)}, {DNNL_ARG_SCRATCHPAD, scratch(p.scratch)}});
  } else {
    p.prim.execute(s, {{DNNL_ARG_DIFF_DST, memory(dst, eng(), dy)}, {DNNL_ARG_DIFF_SRC, memory(src, eng(), out)},
                       {DNNL_ARG_SCRATCHPAD, scratch(p.scratch)}});
  }
  s.wait();
}

bool is_bf16(ffi::DataType t) { return t == ffi::DataType::BF16; }

ffi::Error dtype_ok(ffi::DataType t) {
  if (t == ffi::DataType::F32 || t == ffi::DataType::BF16) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "cnn oneDNN kernels take f32 or bf16 operands");
}

template <typename F>
ffi::Error guarded(F f) {
  try {
    f();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
}

// A call's geometry from the shapes XLA hands over: the input x (NHWC), the window (a kernel's HWIO
// shape, or pooling's kh x kw with c channels out) and the output (NHWC); and the call run under
// `guarded`, once the operands' type is one we take.
template <typename Dims>
Geo geometry(int64_t kind, ffi::DataType t, const Dims& x, int64_t kh, int64_t kw, int64_t o, const Dims& y,
             int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t in_per_group = 0) {
  int64_t groups = in_per_group > 0 ? x[3] / in_per_group : 1;
  return Geo{kind, is_bf16(t), x[0], x[1], x[2], x[3], kh, kw, o, y[1], y[2], sh, sw, pt, pb, pl, pr, groups};
}

template <typename F>
ffi::Error checked(ffi::DataType t, F f) {
  if (auto e = dtype_ok(t); e.failure()) return e;
  return guarded(f);
}

// Convolution: forward (x, w -> y), input gradient (dy, w -> dx), weight gradient (x, dy -> dw).
ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto wd = w.dimensions();
  Geo g = geometry(0, x.element_type(), x.dimensions(), wd[0], wd[1], wd[3], y->dimensions(), sh, sw, pt, pb, pl, pr,
                   wd[2]);
  return checked(x.element_type(), [&] { run_conv(g, x.untyped_data(), w.untyped_data(), y->untyped_data()); });
}

ffi::Error ConvBwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t sh, int64_t sw,
                       int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto wd = w.dimensions();
  Geo g = geometry(1, dy.element_type(), dx->dimensions(), wd[0], wd[1], wd[3], dy.dimensions(), sh, sw, pt, pb, pl,
                   pr, wd[2]);
  return checked(dy.element_type(), [&] { run_conv(g, dy.untyped_data(), w.untyped_data(), dx->untyped_data()); });
}

ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw, int64_t sh,
                          int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto wd = dw->dimensions();
  Geo g = geometry(2, x.element_type(), x.dimensions(), wd[0], wd[1], wd[3], dy.dimensions(), sh, sw, pt, pb, pl, pr,
                   wd[2]);
  return checked(x.element_type(), [&] { run_conv(g, x.untyped_data(), dy.untyped_data(), dw->untyped_data()); });
}

// The forward with the bias added and, `relu` 1, ReLU applied inside the kernel (x, w, b -> y).
ffi::Error ConvFwdBias(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> y,
                       int64_t relu, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto wd = w.dimensions();
  Geo g = geometry(relu ? 8 : 7, x.element_type(), x.dimensions(), wd[0], wd[1], wd[3], y->dimensions(), sh, sw, pt,
                   pb, pl, pr, wd[2]);
  if (b.element_type() != ffi::DataType::F32)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "cnn oneDNN kernels take an f32 bias");
  return checked(x.element_type(), [&] {
    run_conv(g, x.untyped_data(), w.untyped_data(), y->untyped_data(), b.untyped_data());
  });
}

// Pooling: `avg` 0 (max) or 1 (average, padding excluded); window kh x kw.
ffi::Error PoolFwd(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t avg, int64_t kh, int64_t kw, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto xd = x.dimensions();
  Geo g = geometry(avg ? 5 : 3, x.element_type(), xd, kh, kw, xd[3], y->dimensions(), sh, sw, pt, pb, pl, pr);
  return checked(x.element_type(), [&] { run_pool(g, x.untyped_data(), nullptr, y->untyped_data()); });
}

ffi::Error PoolBwd(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx, int64_t avg, int64_t kh,
                   int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto xd = x.dimensions();
  Geo g = geometry(avg ? 6 : 4, x.element_type(), xd, kh, kw, xd[3], dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return checked(x.element_type(), [&] { run_pool(g, x.untyped_data(), dy.untyped_data(), dx->untyped_data()); });
}

}  // namespace

#define CONV_ATTRS                                                                                    \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb").Attr<int64_t>("pl") \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_conv_fwd, ConvFwd,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_conv_fwd_bias, ConvFwdBias,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Attr<int64_t>("relu") CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_conv_bwd_data, ConvBwdData,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_conv_bwd_weights, ConvBwdWeights,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_pool_fwd, PoolFwd,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Attr<int64_t>("avg")
                                  .Attr<int64_t>("kh").Attr<int64_t>("kw") CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_pool_bwd, PoolBwd,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("avg").Attr<int64_t>("kh").Attr<int64_t>("kw") CONV_ATTRS);

// For the Python side, before it offers a kernel as a candidate: the implementation oneDNN picks for
// this geometry (e.g. "brgconv:avx512_core", "jit:avx2", or "ref:any", which is slow: not offered),
// written into `out`. Returns 0, or -1 with the error in `out` when no primitive exists for it.
extern "C" int cnn_impl(const int64_t* geo, char* out, int64_t len) {
  Geo g{geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo[10],
        geo[11], geo[12], geo[13], geo[14], geo[15], geo[16], geo[17]};
  std::string s;
  int rc = 0;
  try {
    std::lock_guard<std::mutex> lock(g_mu);
    s = get(g).impl;
  } catch (const std::exception& e) {
    s = e.what();
    rc = -1;
  }
  std::snprintf(out, len, "%s", s.c_str());
  return rc;
}

extern "C" const char* cnn_onednn_version() {
  static char v[32];
  auto* d = dnnl::version();
  std::snprintf(v, sizeof v, "%d.%d.%d", d->major, d->minor, d->patch);
  return v;
}
